"""zocalo demo: a mini-facility, from detector to database, with a live view of each collection."""

from __future__ import annotations

import click
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from zocalo.cli.common import broker_errors, fail
from zocalo.demo import BUDGET_SECONDS, STAGES, Board, DemoResult, DemoSettings, run_demo
from zocalo.demo.board import INCOMPLETE, INTEGRATING, RECORDED, CollectionProgress
from zocalo.errors import ZocaloError
from zocalo.transport.registry import transport_class

_DEFAULTS = DemoSettings()


def _live_view(board: Board) -> Table:
    """One line per data collection: images taken, spots found so far, where it is."""
    table = Table(title=f"zocalo demo: the mini-facility ({board.phase})", title_justify="left")
    for column, justify in (("DC", "left"), ("taken", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("spots found on images", width=22)
    table.add_column("spots", justify="right")
    table.add_column("intensity", justify="right")
    table.add_column("state")
    for collection in board.snapshot():
        bar = ProgressBar(total=collection.images, completed=collection.found, width=16)
        found = Text(f" {collection.found}/{collection.images}")
        style = {RECORDED: "green", INCOMPLETE: "red"}.get(collection.state, "")
        table.add_row(
            str(collection.dcid),
            f"{collection.acquired}/{collection.images}",
            _side_by_side(bar, found),
            str(collection.spots),
            "" if collection.intensity is None else str(collection.intensity),
            Text(_state(collection), style=style),
        )
    return table


def _state(collection: CollectionProgress) -> str:
    if collection.state == INTEGRATING and collection.job is not None:
        return f"{INTEGRATING} (job {collection.job})"
    return collection.state


def _side_by_side(*cells: ProgressBar | Text) -> Table:
    row = Table.grid()
    for _ in cells:
        row.add_column()
    row.add_row(*cells)
    return row


def _summary(result: DemoResult) -> Table:
    table = Table(title="zocalo demo: from detector to database", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("collections", f"{result.completed} / {len(result.collections)} in the database"),
        (
            "images",
            f"{result.images} taken ({result.images_per_collection} per collection), "
            f"{result.images_recorded} recorded",
        ),
        ("spots found", f"{result.spots_found} (the detector drew {result.spots_drawn})"),
        ("integrated", f"{result.integrated} (a wrapped job each: zocalo.wrap)"),
        ("spot finders", str(result.workers)),
        ("broker", result.broker),
        ("messages handled", str(result.handled)),
        ("dead letters", _with_note(str(result.dead_letters), result.dead_letters_note)),
        ("duplicates", str(result.duplicates)),
        ("lost", str(result.lost)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _with_note(value: str, note: str) -> str:
    return f"{value} ({note})" if note else value


def _latencies(result: DemoResult) -> Table:
    table = Table(title="latency per stage")
    table.add_column("stage", style="bold")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    table.add_column("from -> to")
    for stage, meaning in STAGES:
        if not result.latencies_ms.get(stage):
            table.add_row(stage, "-", "-", meaning)
            continue
        p50, p99 = result.latency(stage, 0.50), result.latency(stage, 0.99)
        table.add_row(stage, f"{p50:.0f} ms", f"{p99:.0f} ms", meaning)
    return table


@click.command("demo")
@click.option(
    "--collections",
    type=click.IntRange(min=1),
    default=_DEFAULTS.collections,
    show_default=True,
    help="Data collections the detector takes.",
)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=_DEFAULTS.images,
    show_default=True,
    help="Images per data collection.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_DEFAULTS.workers,
    show_default=True,
    help="Spot-finding worker processes.",
)
@click.option(
    "-t",
    "--transport",
    metavar="URL",
    help="Broker URL, e.g. amqp://user:pass@host:5672/vhost (default: a fresh embedded "
    "broker in the demo's folder; memory:// runs the services on threads).",
)
def command(collections: int, images: int, workers: int, transport: str | None) -> None:
    """Run a mini-facility: detector -> Dispatcher -> spot finding -> Join -> database."""
    settings = DemoSettings(collections, images, workers, transport)
    if transport is not None:
        with broker_errors():
            transport_class(transport)  # an unusable URL: one line, before the live view
    board = Board(settings.dcids, settings.images)
    console = Console()
    failure: Exception | None = None
    with Live(get_renderable=lambda: _live_view(board), console=console, refresh_per_second=8):
        try:
            result = run_demo(settings, board)
        except (ZocaloError, TimeoutError, RuntimeError) as error:
            failure = error  # said after the live view's last frame
    if failure is not None:
        console.print()
        # A broker error, or a service that would not start (its log says why).
        fail(str(failure) or type(failure).__name__)
    console.print()
    console.print(_summary(result))
    console.print(_latencies(result))
    console.print(f"results database: {result.site / 'results.db'}")
    console.print("look at it with:")
    console.print(f"  {result.sqlite3_command}", highlight=False, soft_wrap=True)
    if result.seconds > BUDGET_SECONDS:
        console.print(
            f"[yellow]took {result.seconds:.1f} s: more than the {BUDGET_SECONDS:g} s it should "
            "take here (is the machine busy?)[/yellow]"
        )
    else:
        console.print(f"finished in {result.seconds:.1f} s (under {BUDGET_SECONDS:g} s)")
    if result.ok:
        console.print("[green]nothing lost, nothing dead-lettered, nothing done twice[/green]")
        return
    console.print(
        f"[red]{result.lost} images lost, {result.dead_letters} dead letters, "
        f"{result.duplicates} duplicates; the services' log: {result.site / 'services.log'}[/red]"
    )
    raise SystemExit(1)
