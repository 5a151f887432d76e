"""``-e/--environment`` and ``--config`` for every command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from zocalo.config import ConfigurationError, load_configuration
from zocalo.config.loader import CONFIG_VARIABLE, DEFAULT_ENV_VARIABLE

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
