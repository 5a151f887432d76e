"""The main site-configuration file and every file it includes, read into one set of
sections and environments.

Includes are read depth first, each file once however often it is listed, and a
later file overrides an earlier one (a section of the same name, a named group
of an environment; see :mod:`~zocalo.config.environments`), each override logged.
Apart from the loader (:mod:`~zocalo.config.loader`, which activates the result)
so that finding and merging the files is one story, told here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zocalo.config.environments import (
    Environment,
    check_environments,
    merge_environment,
    parse_environments,
)
from zocalo.config.files import read_yaml
from zocalo.config.lines import _Map, _Seq
from zocalo.config.sections import RESERVED, Section, parse_section
from zocalo.errors import ConfigurationError

logger = logging.getLogger("zocalo.config")


class SiteFiles:
    """Accumulates sections and environments from the main file and its includes."""

    def __init__(self) -> None:
        self.sections: dict[str, Section] = {}
        self.environments: dict[str, Environment] = {}
        self.seen: set[Path] = set()

    def add_file(self, path: Path, *, main: bool, referrer: str | None, line: int | None) -> None:
        resolved = path.resolve()
        if resolved in self.seen:
            logger.debug("%s: already read, not including it again", path)
            return
        self.seen.add(resolved)
        source = str(path)
        data = read_yaml(
            path, "configuration file" if main else "include", referrer=referrer, line=line
        )
        if not isinstance(data, _Map):
            raise ConfigurationError(
                "a configuration file must be a YAML mapping",
                file=source,
                line=getattr(data, "line", 1) if data is not None else None,
            )
        if "version" not in data:
            if main:
                raise ConfigurationError(
                    "'version: 1' is missing", file=source, line=1, key="version"
                )
        elif data["version"] != 1 or isinstance(data["version"], bool):
            raise ConfigurationError(
                f"version {data['version']!r} is not supported (only version 1 is)",
                file=source,
                line=data.key_lines["version"],
                key="version",
            )
        for name, value in data.items():
            if name in RESERVED:
                continue
            self._add_section(name, value, data, path)
        if data.get("environments") is not None:
            for environment in parse_environments(
                data["environments"], data.key_lines["environments"], source
            ):
                merge_environment(self.environments, environment)
        for include, include_line in self._includes(data, source):
            target = (path.parent / Path(include).expanduser()).absolute()
            self.add_file(target, main=False, referrer=source, line=include_line)

    @staticmethod
    def _includes(data: _Map, source: str) -> list[tuple[str, int]]:
        include = data.get("include")
        if include is None:
            return []
        line = data.key_lines["include"]
        if isinstance(include, str):
            return [(include, line)]
        if isinstance(include, _Seq) and all(isinstance(item, str) for item in include):
            return list(zip(include, include.item_lines, strict=True))
        raise ConfigurationError(
            "'include' must be a file path or a list of them",
            file=source,
            line=line,
            key="include",
        )

    def _add_section(self, name: Any, value: Any, data: _Map, path: Path) -> None:
        section = parse_section(name, value, data, path)
        previous = self.sections.get(section.name)
        if previous is not None:
            logger.info(
                "section '%s' from %s, line %d replaces the one from %s, line %d",
                section.name,
                section.file,
                section.line,
                previous.file,
                previous.line,
            )
        self.sections[section.name] = section

    def check(self) -> None:
        """Every reference resolves: sections exist, aliases end at a real environment."""
        check_environments(self.environments, self.sections)
