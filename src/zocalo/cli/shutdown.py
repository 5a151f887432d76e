"""zocalo.shutdown: ask running services to stop, by host id or by service."""

from __future__ import annotations

import json
import socket

import click

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.service.status import COMMAND_TOPIC


def qualify_host(host: str) -> str:
    """``name.pid`` gets this machine's reversed domain in front, as python-zocalo does."""
    if host.count(".") != 1:
        return host
    domain = socket.getfqdn().split(".")[1:]
    return ".".join([*reversed(domain), host])


def shutdown_commands(
    hosts: tuple[str, ...], services: tuple[str, ...], everyone: bool
) -> list[dict[str, object]]:
    """The command messages to broadcast (one per target)."""
    commands: list[dict[str, object]] = [
        {"command": "shutdown", "host": qualify_host(host)} for host in hosts
    ]
    commands += [
        {"command": "shutdown", "service": None if service.lower() == "none" else service}
        for service in services
    ]
    if everyone:
        commands.append({"command": "shutdown", "all": True})
    return commands


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
            broker.broadcast(COMMAND_TOPIC, json.dumps(message))
            click.echo(f"sent {json.dumps(message)}")


def main() -> None:
    command(prog_name="zocalo.shutdown")


if __name__ == "__main__":
    main()
