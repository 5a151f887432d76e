"""zocalo.dlq_check: how many messages each dead-letter queue holds (python-zocalo's tool).

Exit status 1 when any dead-letter queue holds messages (or the broker cannot be asked),
as python-zocalo's, so a monitoring check can run it as it is.
"""

from __future__ import annotations

import contextlib
import json

import click

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import HELP_OPTIONS, listing_for, management_url_option
from zocalo.config import SiteConfiguration
from zocalo.dlq.check import count_dead_letters
from zocalo.dlq.listing import is_rabbitmq


@click.command("check", context_settings=HELP_OPTIONS)
@click.option(
    "-n",
    "--namespace",
    metavar="NAME",
    help="RabbitMQ: the vhost to check (default: the URL's). Other brokers: only queues "
    "named NAME.*",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@transport_option
@management_url_option
@site_config_options
def command(
    namespace: str | None,
    as_json: bool,
    transport: str | None,
    management_url: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Report the messages waiting in each dead-letter queue (dlq.*)."""
    url = resolve_transport(transport, site_config)
    with contextlib.ExitStack() as stack:
        broker = None if is_rabbitmq(url) else stack.enter_context(open_broker(url))
        listing = stack.enter_context(
            listing_for(url, broker, management_url, site_config, namespace or None)
        )
        found = count_dead_letters(listing)
    if as_json:
        click.echo(json.dumps(found.to_json(), sort_keys=True))
    else:
        for line in found.lines():
            click.echo(line)
    if found.total:
        if not as_json:
            click.echo(found.summary(), err=True)
        raise click.exceptions.Exit(1)
    if not as_json:
        click.echo(found.summary())


def main() -> None:
    command(prog_name="zocalo.dlq_check")


if __name__ == "__main__":
    main()
