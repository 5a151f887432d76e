"""zocalo.queue_drain: move the messages of one queue to another, paced (python-zocalo's tool).

Each message is moved with one atomic publish-and-ack: stopped or killed at any moment,
the drain loses nothing.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

from zocalo.cli.common import broker_errors, open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import HELP_OPTIONS, listing_for, management_url_option
from zocalo.config import SiteConfiguration
from zocalo.dlq.drain import OWN_STEP, Moved, drain


@contextmanager
def stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) asks the drain to stop after the message in hand."""
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report(moved: Moved, count: int, seconds: float) -> None:
    click.echo()
    if moved.sent_at is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moved.sent_at))
        click.echo(f"Message date: {stamp}")
    if moved.recipe_id is not None:
        click.echo(f"Recipe ID:    {moved.recipe_id}")
    click.echo(f"Target Queue: {moved.target}")
    for line in moved.details:
        click.echo(line)
    click.echo(f"{count:4d} message(s) drained in {seconds:.1f} seconds")


@click.command("queue_drain", context_settings=HELP_OPTIONS)
@click.argument("source")
@click.argument("dest")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long between messages.",
)
@click.option(
    "--stop",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop when no message came for this long (0: never).",
)
@transport_option
@management_url_option
@site_config_options
def command(
    source: str,
    dest: str,
    wait: float,
    stop: float,
    transport: str | None,
    management_url: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Move the messages of queue SOURCE to queue DEST ('.': the queue of the recipe step
    each message points to)."""
    url = resolve_transport(transport, site_config)
    stop_now = threading.Event()
    with open_broker(url) as broker:
        with listing_for(url, broker, management_url, site_config) as listing:
            listing.require([source])  # subscribing to a missing queue would create it
        click.echo(f"Reading messages from {source}")
        if dest == OWN_STEP:
            click.echo("Writing messages to automatically determined destinations")
        else:
            click.echo(f"Writing messages to {dest}")
        with stop_on_interrupt(stop_now), broker_errors():
            result = drain(
                broker, source, dest, wait=wait, stop=stop, on_moved=report, stop_now=stop_now
            )
    if stop_now.is_set():
        click.echo(
            f"\nCancelling, {result.moved} message(s) drained, {result.unprocessed} message(s) "
            "unprocessed in memory (returned to the queue)",
            err=True,
        )
        raise click.exceptions.Exit(1)
    click.echo(
        f"{result.moved} message(s) drained, no message seen for {result.idle_seconds:.1f} seconds"
    )


def main() -> None:
    command(prog_name="zocalo.queue_drain")


if __name__ == "__main__":
    main()
