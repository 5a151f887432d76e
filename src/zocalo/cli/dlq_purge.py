"""zocalo.dlq_purge: move dead letters to files (python-zocalo's tool and file layout).

Each message is acknowledged only once its file is on disk (fsynced): killed at any
moment, the purge loses nothing. Files are private to you (0600 in 0700 directories).
"""

from __future__ import annotations

import time
from collections import defaultdict

import click

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import (
    HELP_OPTIONS,
    listing_for,
    management_url_option,
    purge_location,
)
from zocalo.config import SiteConfiguration
from zocalo.dlq.files import Exported
from zocalo.dlq.listing import dead_letter_queue_names
from zocalo.dlq.purge import purge


def exported_lines(done: Exported) -> list[str]:
    """python-zocalo's two lines per message (``zocalo.dlq_reinject`` reads the second)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(done.dead_lettered))
    return [f"    Message {done.message_id} ({when}) exported:", f"        {done.path}"]


@click.command("purge", context_settings=HELP_OPTIONS)
@click.argument("queues", nargs=-1, metavar="[QUEUE]...")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Stop after no message for this long (default: 3 s for the first, 0.1 s after).",
)
@click.option(
    "--location",
    metavar="DIR",
    help="Where to write the files (default: the site configuration's "
    "zocalo.dlq.purge_location, else ./DLQ).",
)
@transport_option
@management_url_option
@site_config_options
def command(
    queues: tuple[str, ...],
    wait: float | None,
    location: str | None,
    transport: str | None,
    management_url: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Write every message of the dead-letter queues QUEUE (dlq.QUEUE; default: every
    dlq.* queue) to a file, then remove it from the queue."""
    url = resolve_transport(transport, site_config)
    directory = purge_location(site_config, location)
    with open_broker(url) as broker:
        with listing_for(url, broker, management_url, site_config) as listing:
            names = dead_letter_queue_names(queues) or list(listing.dead_letter_queues())
            listing.require(names)
        click.echo(f"Looking for DLQ messages in {len(names)} queues...")
        exported = purge(broker, names, directory, wait=wait)
    by_queue: dict[str, list[Exported]] = defaultdict(list)
    for done in exported:
        by_queue[done.queue].append(done)
    for queue, messages in by_queue.items():
        click.echo(f"Found {len(messages)} DLQ messages in {queue}")
        for done in messages:
            for line in exported_lines(done):
                click.echo(line)
    click.echo("Done.")


def main() -> None:
    command(prog_name="zocalo.dlq_purge")


if __name__ == "__main__":
    main()
