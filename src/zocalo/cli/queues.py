"""zocalo queues: what each queue holds, in flight and dead-lettered, and its consumers."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from zocalo.cli.common import broker_errors, open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.transport import create_transport, dlq_name
from zocalo.transport.base import QueueStats
from zocalo.transport.registry import redact_url


def queue_table(stats: list[QueueStats]) -> Table:
    """One row per queue; its dead letters (``dlq.<queue>``) beside it."""
    by_name = {entry.queue: entry for entry in stats}
    table = Table("queue", "ready", "delayed", "in flight", "dead-lettered", "consumers")
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
            str(entry.consumers),
        )
    return table


def rabbitmq_queue_stats(
    url: str, management_url: str | None, site_config: SiteConfiguration
) -> list[QueueStats]:
    """The vhost's queues through the RabbitMQ management API (AMQP cannot list them)."""
    from zocalo.rabbitmq_admin.api import ManagementAPIError
    from zocalo.rabbitmq_admin.endpoints import management_target
    from zocalo.rabbitmq_admin.queues import queue_stats

    target = management_target(url, management_url, site_config.plugins.get("rabbitmqapi"))
    try:
        api = target.connect()
    except ManagementAPIError as error:
        raise click.ClickException(
            f"{error} (user {target.username}; another with --management-url)"
        ) from None
    try:
        return queue_stats(api, target.vhost)
    except ManagementAPIError as error:
        raise click.ClickException(
            f"{error} (the management API at {redact_url(api.base_url)}, user {target.username}; "
            "another with --management-url)"
        ) from None
    finally:
        api.close()


@click.command("queues")
@transport_option
@click.option(
    "--management-url",
    metavar="URL",
    help="RabbitMQ management API, e.g. http://user:pass@host:15672 (default: the "
    "rabbitmqapi plugin's, else the AMQP host on port 15672, or 15671 for amqps).",
)
@site_config_options
def command(
    transport: str | None, management_url: str | None, site_config: SiteConfiguration
) -> None:
    """List queue depths and consumers on the broker."""
    url = resolve_transport(transport, site_config)
    if url.partition("://")[0].lower() in ("amqp", "amqps"):
        with broker_errors():
            create_transport(url)  # the URL and its options are checked as everywhere
        stats = rabbitmq_queue_stats(url, management_url, site_config)
    else:
        with open_broker(url) as broker:
            stats = broker.queue_stats()
    Console().print(queue_table(stats))
