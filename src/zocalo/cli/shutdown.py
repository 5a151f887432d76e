"""zocalo.shutdown: ask running services to stop, by host id or by service."""

from __future__ import annotations

import click

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.service.commands import broadcast_command, shutdown_commands


@click.command("shutdown")
@click.argument("hosts", nargs=-1, metavar="[HOST.PID]...")
@click.option(
    "-s",
    "--service",
    "services",
    multiple=True,
    metavar="NAME",
    help="Stop every instance of this service: the name it was started with "
    "(e.g. demo.FindSpots) or its class name (repeatable).",
)
@click.option("--all", "everyone", is_flag=True, help="Stop every zocalo service on the broker.")
@transport_option
@site_config_options
def command(
    hosts: tuple[str, ...],
    services: tuple[str, ...],
    everyone: bool,
    transport: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Broadcast shutdown commands on the 'command' topic."""
    commands = shutdown_commands(hosts, services, everyone)
    if not commands:
        raise click.UsageError("give host ids, -s SERVICE or --all")
    url = resolve_transport(transport, site_config)
    with open_broker(url) as broker:
        for message in commands:
            click.echo(f"sent {broadcast_command(broker, message)}")


def main() -> None:
    command(prog_name="zocalo.shutdown")


if __name__ == "__main__":
    main()
