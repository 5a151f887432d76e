"""``-e/--environment`` and ``--config`` for every command, and the transport they imply."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from zocalo.config import ConfigurationError, SiteConfiguration, load_configuration
from zocalo.config.loader import CONFIG_VARIABLE, DEFAULT_ENV_VARIABLE
from zocalo.config.names import TRANSPORT_NAMES
from zocalo.transport.registry import ENVIRONMENT_VARIABLE, redact_url

F = TypeVar("F", bound=Callable[..., Any])


def site_config_options(command: F) -> F:
    """Add ``-e/--environment ENV`` (repeatable) and ``--config PATH`` to a click command.

    The command receives the loaded, activated configuration as ``site_config``. A broken
    file or an unknown environment ends the command with the loader's message (file, line).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        environments = kwargs.pop("zocalo_environments", ())
        path = kwargs.pop("zocalo_config_path", None)
        try:
            kwargs["site_config"] = load_configuration(path, environments=environments)
        except ConfigurationError as error:
            raise click.ClickException(str(error)) from None
        return command(*args, **kwargs)

    wrapper = click.option(
        "--config",
        "zocalo_config_path",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        help=f"Site configuration file (python-zocalo format); default ${CONFIG_VARIABLE}.",
    )(wrapper)
    wrapper = click.option(
        "-e",
        "--environment",
        "zocalo_environments",
        metavar="ENV",
        multiple=True,
        help="Activate this site configuration environment (repeatable); default "
        f"${DEFAULT_ENV_VARIABLE}, else the environment named 'default'.",
    )(wrapper)
    return wrapper  # type: ignore[return-value]


def resolve_transport_url(
    transport_option: str | None, site_config: SiteConfiguration | None
) -> str | None:
    """The broker URL for ``-t/--transport``, or None to use the embedded default.

    * A URL (anything with ``://``) is used as given.
    * ``PikaTransport`` / ``StompTransport``, python-zocalo's names, take the broker from the
      active environment's ``pika`` / ``stomp`` section.
    * Nothing: ``$ZOCALO_TRANSPORT`` (a URL or one of those names), else the transport the
      site configuration implies, else None.
    """
    config = site_config if site_config is not None else SiteConfiguration()
    source = "-t/--transport"
    value = transport_option
    if value is None:
        value = os.environ.get(ENVIRONMENT_VARIABLE) or None
        source = f"${ENVIRONMENT_VARIABLE}"
    try:
        if value is None:
            return config.transport_url(None)
        if "://" in value:
            return value
        if value in TRANSPORT_NAMES:
            return config.transport_url(value)
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from None
    raise click.UsageError(
        f"{source} {redact_url(value)!r} is neither a URL (e.g. amqp://user:pass@host/vhost) "
        f"nor one of {', '.join(TRANSPORT_NAMES)}"
    )
