"""Options and checks shared by the command-line tools."""

from __future__ import annotations

import click

from zocalo.errors import InvalidURL
from zocalo.transport.base import Capability
from zocalo.transport.registry import (
    ENVIRONMENT_VARIABLE,
    default_transport_url,
    transport_class,
)

#: Transport names python-zocalo accepts for -t; they need the site configuration.
REFERENCE_TRANSPORT_NAMES = ("PikaTransport", "StompTransport")

transport_option = click.option(
    "-t",
    "--transport",
    "transport",
    metavar="URL",
    help=f"Broker URL (sqlite:///path, amqp://...); default ${ENVIRONMENT_VARIABLE}, "
    "else the embedded broker in your data directory.",
)


def resolve_transport(value: str | None, *, cross_process: bool = True) -> str:
    """The transport URL a tool should use, or a click error saying why there is none."""
    value = value or default_transport_url()
    if "://" not in value:
        if value in REFERENCE_TRANSPORT_NAMES:
            raise click.UsageError(
                f"transport {value} is configured from the site configuration, which this "
                "version cannot read yet; give a URL instead (e.g. amqp://user:pass@host/vhost)"
            )
        raise click.UsageError(
            f"transport {value!r} is neither a URL nor one of "
            f"{', '.join(REFERENCE_TRANSPORT_NAMES)}"
        )
    try:
        capabilities = transport_class(value).capabilities
    except InvalidURL as error:
        raise click.UsageError(str(error)) from None
    if cross_process and Capability.CROSS_PROCESS not in capabilities:
        raise click.UsageError(
            f"{value} is an in-process broker: another process cannot reach it, so what this "
            "command sends would vanish. Use a broker other processes share."
        )
    return value
