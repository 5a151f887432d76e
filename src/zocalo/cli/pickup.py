"""zocalo.pickup: send the requests zocalo.go left on disk while the broker was away
(python-zocalo's tool).

Oldest first, each to processing_recipe with its stored headers; a file is deleted only
once the broker confirmed its request.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import click

from zocalo.cli.common import broker_errors, open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import HELP_OPTIONS
from zocalo.cli.queue_drain import stop_on_interrupt
from zocalo.config import SiteConfiguration
from zocalo.dlq.pickup import (
    FALLBACK_LOCATION_KEY,
    DropFile,
    drop_files,
    only_pickup,
    read_drop_file,
    send_all,
)


@click.command("pickup", context_settings=HELP_OPTIONS)
@click.option(
    "-d",
    "--delay",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long between requests.",
)
@click.option(
    "-w",
    "--wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long before the first.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show each request before sending it.")
@click.option(
    "--location",
    metavar="DIR",
    help=f"Where the requests are (default: the site configuration's {FALLBACK_LOCATION_KEY}).",
)
@transport_option
@site_config_options
def command(
    delay: float,
    wait: float,
    verbose: bool,
    location: str | None,
    transport: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Send the requests zocalo.go could not send to processing_recipe, oldest first."""
    where = location or site_config.storage.get(FALLBACK_LOCATION_KEY)
    if not where:
        raise click.UsageError(
            f"where are the requests? give --location DIR, or set {FALLBACK_LOCATION_KEY} in "
            "the site configuration's storage"
        )
    directory = Path(where)
    stop_now = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(broker_errors())
        stack.enter_context(only_pickup(directory))  # held until the last is sent
        requests = [read_drop_file(path) for path in drop_files(directory)]
        click.echo(f"Found {len(requests)} files")
        if not requests:
            return
        url = resolve_transport(transport, site_config)
        stack.enter_context(stop_on_interrupt(stop_now))
        if wait:
            click.echo(f"Waiting {wait:g} seconds")
            stop_now.wait(wait)

        def sending(request: DropFile) -> None:
            click.echo(
                f"Sending {request.path} from host {request.host} with recipes {request.recipes}"
            )
            if verbose:
                click.echo(f"  headers: {request.headers}\n  message: {request.message}")

        def sent(request: DropFile, count: int) -> None:
            click.echo(f"Done ({count} of {len(requests)})")

        broker = stack.enter_context(open_broker(url))
        count = send_all(
            broker, requests, delay=delay, on_sent=sent, before_send=sending, stop_now=stop_now
        )
    if count < len(requests) and stop_now.is_set():
        click.echo("CTRL+C - stopping", err=True)
        raise click.exceptions.Exit(1)


def main() -> None:
    command(prog_name="zocalo.pickup")


if __name__ == "__main__":
    main()
