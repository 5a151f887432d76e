"""zocalo monitor: a live view of every service on the status topic."""

from __future__ import annotations

import click

from zocalo.cli.common import broker_errors, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.monitor.view import show_live, show_once


@click.command("monitor")
@transport_option
@click.option(
    "--once",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Listen for SECONDS, print one table and exit (services report every 6 s).",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Redraw interval of the live view.",
)
@site_config_options
def command(
    transport: str | None, once: float | None, refresh: float, site_config: SiteConfiguration
) -> None:
    """Show every service broadcasting status: state, throughput, last seen, restarts."""
    url = resolve_transport(transport, site_config)
    with broker_errors():
        if once is not None:
            show_once(url, once)
        else:
            show_live(url, refresh)


def main() -> None:
    command(prog_name="zocalo.monitor")


if __name__ == "__main__":
    main()
