"""zocalo demo: watch jobs flow through a chain of services."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zocalo.cli.common import broker_errors, resolve_transport
from zocalo.demo import DemoResult, run_demo


def _summary(result: DemoResult) -> Table:
    table = Table(title="zocalo demo", show_header=False)
    rows = [
        ("jobs completed", f"{result.completed} / {result.jobs}"),
        ("broker", result.broker),
        ("submitted", f"{result.jobs} jobs in {result.submit_seconds:.1f} s ({result.rate:g}/s)"),
        ("images per job", str(result.images_per_job)),
        ("messages handled", str(result.handled)),
        ("throughput", f"{result.messages_per_second:.0f} msgs/s"),
        ("job latency p50", f"{result.percentile(0.50):.1f} ms"),
        ("job latency p99", f"{result.percentile(0.99):.1f} ms"),
        ("handler failures", str(result.failed)),
        ("lost", str(result.lost)),
        ("dead-lettered", str(result.dead_lettered)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


@click.command("demo")
@click.option(
    "--jobs", type=click.IntRange(min=1), default=40, show_default=True, help="Jobs to submit."
)
@click.option(
    "--images", type=click.IntRange(min=1), default=20, show_default=True, help="Images per job."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Jobs submitted per second.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Run the services on threads on the in-memory broker (default: one process each "
    "on a fresh embedded broker).",
)
@click.option(
    "-t",
    "--transport",
    "transport",
    metavar="URL",
    help="Run the services on this broker (a URL other processes reach, e.g. "
    "stomp://user:pass@host:61613 or amqp://...; default: a fresh embedded broker).",
)
def command(jobs: int, images: int, rate: float, in_process: bool, transport: str | None) -> None:
    """Run three example services and push jobs through them."""
    url = None
    if transport is not None:
        if in_process:
            raise click.UsageError("--in-process runs on its own in-memory broker: no --transport")
        url = resolve_transport(transport)
    console = Console()
    with (
        broker_errors(),
        Progress(
            TextColumn("jobs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("jobs", total=jobs)
        result = run_demo(
            jobs,
            images,
            in_process=in_process,
            url=url,
            rate=rate,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(_summary(result))
    if result.ok:
        console.print("[green]nothing lost, nothing dead-lettered[/green]")
    else:
        console.print(f"[red]{result.lost} jobs lost, {result.dead_lettered} dead-lettered[/red]")
        raise SystemExit(1)
