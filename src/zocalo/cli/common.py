"""Options and checks shared by the command-line tools."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import click

from zocalo.config import SiteConfiguration
from zocalo.errors import ZocaloError
from zocalo.transport.base import Transport
from zocalo.transport.registry import ENVIRONMENT_VARIABLE, create_transport, resolve_broker_url

transport_option = click.option(
    "-t",
    "--transport",
    "transport",
    metavar="URL",
    help=f"Broker URL (sqlite:///path, amqp://...) or PikaTransport/StompTransport; default "
    f"${ENVIRONMENT_VARIABLE}, else the site configuration's, else the embedded broker in "
    "your data directory.",
)


def resolve_transport(
    value: str | None, site_config: SiteConfiguration | None = None, *, cross_process: bool = True
) -> str:
    """The broker URL for ``-t/--transport`` (see :func:`resolve_broker_url` for the rule),
    or a usage error saying why there is none."""
    try:
        return resolve_broker_url(
            value, site_config, given_as="-t/--transport", cross_process=cross_process
        )
    except ZocaloError as error:
        raise click.UsageError(str(error)) from None


def fail(message: str) -> NoReturn:
    """End the command with one ``Error:`` line and exit status 1.

    Printed at once, before any cleanup (closing a connection to a stuck broker can
    take a while), so the user sees why as soon as it is known.
    """
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(1)


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Turn a broker failure (bad URL, credentials, vhost, lost connection, no answer in
    time) into a clear one-line error and a non-zero exit, instead of a traceback."""
    try:
        yield
    except ZocaloError as error:
        fail(str(error))
    except TimeoutError as error:
        fail(f"no answer from the broker in time{f': {error}' if str(error) else ''}")


@contextlib.contextmanager
def open_broker(url: str) -> Iterator[Transport]:
    """A connected transport for a command; any broker failure is one line and exit 1."""
    with broker_errors():
        transport = create_transport(url)
        transport.connect()
    try:
        with broker_errors():
            yield transport
    finally:
        transport.close()
