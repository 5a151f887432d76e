"""Find, parse, merge and activate a python-zocalo site configuration file.

The format (COMPAT section 5), in short::

    version: 1
    include: [common.yaml]          # optional, relative to this file
    rmq:                            # a section: a named plugin configuration ...
      plugin: pika
      host: rabbitmq.example.com
      ...
    rmq-credentials: secrets/rmq.yaml   # ... or a file holding one, read on activation
    environments:
      live: [rmq, storage-live]     # a list of sections (the group "plugins")
      test:                         # or groups of sections, activated alphabetically,
        transport: rmq-test         #   "plugins" last, duplicates dropped
        plugins: [storage-test]
      default: live                 # or an alias of another environment

Includes: every included file is read when the configuration loads (files listed by an
included file are read after it, depth first; a file is read once however often it is
listed). Later files override earlier ones: an included file replaces a section of the
same name from the file that includes it, and replaces a named group of an environment;
its ``plugins`` list is appended to the environment's list. Every override is logged.

Errors are :class:`ConfigurationError`, whose message starts with the file and line.

This module is the public face: :func:`load_configuration` finds the file
(``$ZOCALO_CONFIG``) and the environments to activate (``$ZOCALO_DEFAULT_ENV``,
``default``); :class:`SiteConfiguration` activates them. Reading the files and
their includes is :mod:`~zocalo.config.includes`, the ``environments`` block
:mod:`~zocalo.config.environments`, a section and its checking
:mod:`~zocalo.config.sections`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from zocalo.config.environments import Environment, resolve_alias
from zocalo.config.includes import SiteFiles
from zocalo.config.sections import Section, plugin_schemas
from zocalo.errors import ConfigurationError

__all__ = [
    "CONFIG_VARIABLE",
    "DEFAULT_ENV_VARIABLE",
    "ConfigurationError",
    "SiteConfiguration",
    "load_configuration",
]

logger = logging.getLogger("zocalo.config")

CONFIG_VARIABLE = "ZOCALO_CONFIG"
DEFAULT_ENV_VARIABLE = "ZOCALO_DEFAULT_ENV"


class SiteConfiguration:
    """A loaded site configuration and the result of activating its environments.

    ``plugins`` maps a plugin name (``pika``, ``storage``, ...) to the value the active
    environments gave it: a validated model, or a dict for ``storage`` (every block merged,
    later keys winning) and for plugins this version does not know. When two sections of the
    same plugin are active, the later one wins.
    """

    def __init__(
        self,
        path: Path | None = None,
        sections: dict[str, Section] | None = None,
        environments: dict[str, Environment] | None = None,
    ) -> None:
        self.path = path
        self._sections = sections or {}
        self._environments = environments or {}
        self._active: list[str] = []
        self._plugins: dict[str, Any] = {}

    @property
    def environments(self) -> tuple[str, ...]:
        """Every environment the file defines, aliases included, in file order."""
        return tuple(self._environments)

    @property
    def active(self) -> tuple[str, ...]:
        """The environments activated, as they were named (an alias stays an alias)."""
        return tuple(self._active)

    @property
    def plugins(self) -> dict[str, Any]:
        return self._plugins

    @property
    def storage(self) -> dict[str, Any]:
        return self._plugins.get("storage", {})

    def section(self, name: str) -> Any:
        """The validated value of one section, reading its file if it is a path section."""
        if name not in self._sections:
            known = ", ".join(sorted(self._sections)) or "none"
            raise ConfigurationError(
                f"no section {name!r} (sections: {known})", file=self.path, key=name
            )
        return self._sections[name].resolve()[1]

    def transport_url(self, name: str | None = None) -> str | None:
        """See :func:`zocalo.config.plugins.transport_url`."""
        return plugin_schemas().transport_url(
            self.plugins, name, active=self.active, path=self.path
        )

    def __repr__(self) -> str:
        return (
            f"<SiteConfiguration {self.path or '(none)'}: {len(self._environments)} environments,"
            f" {len(self._sections)} sections, active {list(self._active)}>"
        )

    # ----------------------------------------------------------------- activation

    def _activate(self, names: Iterable[str], *, origin: str = "-e") -> None:
        for name in names:
            if name not in self._environments:
                known = ", ".join(self._environments) or "none"
                raise ConfigurationError(
                    f"environment {name!r} ({origin}) is not defined (environments: {known})",
                    file=self.path,
                    key=name,
                )
        for name in dict.fromkeys(names):
            logger.debug("activating environment %s", name)
            for ref in resolve_alias(self._environments, name).sections():
                plugin, value = self._sections[ref.name].resolve(name)
                if plugin in plugin_schemas().FREE_FORM:
                    self._plugins.setdefault(plugin, {}).update(value)
                    continue
                self._plugins[plugin] = value
                canonical = plugin_schemas().CANONICAL.get(plugin)
                if canonical:
                    self._plugins[canonical] = value
            self._active.append(name)


def load_configuration(
    path: str | Path | None = None, *, environments: Sequence[str] = ()
) -> SiteConfiguration:
    """Load a site configuration and activate environments.

    ``path`` defaults to ``$ZOCALO_CONFIG``; with neither, the configuration is empty.
    ``environments`` are activated in order; if none are given, ``$ZOCALO_DEFAULT_ENV``
    is, else an environment named ``default`` if the file defines one.
    """
    if isinstance(environments, str):
        environments = [environments]
    if path is None or path == "":
        path = os.environ.get(CONFIG_VARIABLE) or None
    if path is None:
        if environments:
            raise ConfigurationError(
                f"environment {', '.join(map(repr, environments))} requested, but there is no "
                f"site configuration (set {CONFIG_VARIABLE} or use --config)"
            )
        return SiteConfiguration()
    path = Path(path).expanduser()
    files = SiteFiles()
    files.add_file(path, main=True, referrer=None, line=None)
    files.check()
    config = SiteConfiguration(path, files.sections, files.environments)
    if environments:
        config._activate(list(environments))
    elif os.environ.get(DEFAULT_ENV_VARIABLE, "").strip():
        default = os.environ[DEFAULT_ENV_VARIABLE].strip()
        config._activate([default], origin=f"${DEFAULT_ENV_VARIABLE}")
    elif "default" in files.environments:
        config._activate(["default"], origin="default")
    return config
