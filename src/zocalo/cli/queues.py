"""zocalo queues: what each queue holds, in flight and dead-lettered."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.transport import dlq_name
from zocalo.transport.base import QueueStats


def queue_table(stats: list[QueueStats]) -> Table:
    """One row per queue; its dead letters (``dlq.<queue>``) beside it."""
    by_name = {entry.queue: entry for entry in stats}
    table = Table("queue", "ready", "delayed", "in flight", "dead-lettered")
    names = sorted({entry.queue.removeprefix("dlq.") for entry in stats})
    for name in names:
        entry = by_name.get(name, QueueStats(name))
        dead = by_name.get(dlq_name(name), QueueStats(dlq_name(name)))
        table.add_row(
            name,
            str(entry.ready),
            str(entry.delayed),
            str(entry.in_flight),
            str(dead.ready + dead.delayed + dead.in_flight),
        )
    return table


@click.command("queues")
@transport_option
@site_config_options
def command(transport: str | None, site_config: SiteConfiguration) -> None:
    """List queue depths on the broker."""
    url = resolve_transport(transport, site_config)
    with open_broker(url) as broker:
        stats = broker.queue_stats()
    Console().print(queue_table(stats))
