"""zocalo.service: run one service."""

from __future__ import annotations

import logging

import click

from zocalo.cli.common import resolve_transport, transport_option
from zocalo.logs import setup_logging
from zocalo.service.discovery import ServiceNotFound, load_service
from zocalo.service.launch import run_service


@click.command("service")
@click.argument("positional_name", required=False, metavar="[NAME]")
@click.option("-s", "--service", "name", metavar="NAME", help="Service to run.")
@transport_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("-v", "--verbose", count=True, help="More log output.")
def command(
    positional_name: str | None,
    name: str | None,
    transport: str | None,
    log_format: str,
    verbose: int,
) -> None:
    """Run the service NAME until SIGTERM/SIGINT."""
    name = name or positional_name
    if not name:
        raise click.UsageError("which service? give -s NAME")
    url = resolve_transport(transport)
    setup_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    try:
        service_class = load_service(name)
    except ServiceNotFound as error:
        raise click.UsageError(str(error)) from None
    run_service(service_class, url)


def main() -> None:
    command(prog_name="zocalo.service")


if __name__ == "__main__":
    main()
