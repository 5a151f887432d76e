"""A section of the site configuration: one named plugin configuration, and its checking.

A section is written inline (a mapping with a ``plugin`` key) or as the path of a
file holding one, read only when an environment that uses it is activated. Each is
validated against its plugin's schema (:mod:`zocalo.config.plugins`, imported on
first use: pydantic is heavy), and every problem pydantic finds is reported with
the file and line of the offending key. Apart from the loader so that this, the
one place a section's body is judged, reads alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zocalo.config.files import read_yaml
from zocalo.config.lines import _Map, _Seq, plain
from zocalo.errors import ConfigurationError

if TYPE_CHECKING:
    from types import ModuleType

    from pydantic import ValidationError

logger = logging.getLogger("zocalo.config")

#: The top-level keys of a configuration file that are not sections.
RESERVED = frozenset({"version", "environments", "include"})


def plugin_schemas() -> ModuleType:
    """The plugin schemas, imported on first use: pydantic is heavy, and every
    service's supervisor imports the loader whether or not a site file exists."""
    from zocalo.config import plugins

    return plugins


@dataclass
class Section:
    """One named plugin configuration: inline, or a file path not read until needed."""

    name: str
    file: str
    line: int
    body: _Map | None = None
    path: Path | None = None
    value: Any = None  # the validated model or dict, once resolved
    resolved: bool = False

    def resolve(self, environment: str | None = None) -> tuple[str, Any]:
        """(plugin name, validated value); a path section's file is read on first use
        (``environment``: the one that needs it, for the error if it cannot be read)."""
        if not self.resolved:
            if self.path is not None:
                needed = f" (needed by environment '{environment}')" if environment else ""
                body = read_yaml(
                    self.path,
                    f"section '{self.name}'{needed}",
                    referrer=self.file,
                    line=self.line,
                )
                if not isinstance(body, _Map) or not isinstance(body.get("plugin"), str):
                    raise ConfigurationError(
                        f"section '{self.name}': the file must hold a mapping with a 'plugin' key",
                        file=self.path,
                        line=getattr(body, "line", 1),
                        key="plugin",
                    )
                _warn_if_unknown(body["plugin"], self, self.path, body.key_lines["plugin"])
                self.body = body
            assert self.body is not None
            self.value = _validate(self.body["plugin"], self.body, self, self.body)
            self.resolved = True
        assert self.body is not None
        return self.body["plugin"], self.value


def parse_section(name: Any, value: Any, data: _Map, path: Path) -> Section:
    """The section ``name: value`` of file ``path`` (whose top level is ``data``).

    Inline sections are validated now, so a typo fails every run, not just the runs
    that activate it; a path section is read when first needed.
    """
    source, line = str(path), data.key_lines[name]
    if not isinstance(name, str):
        raise ConfigurationError(f"section name {name!r} must be a string", file=source, line=line)
    section = Section(name=name, file=source, line=line)
    if isinstance(value, str):
        section.path = (path.parent / Path(value).expanduser()).absolute()
    elif isinstance(value, _Map):
        plugin = value.get("plugin")
        if not isinstance(plugin, str):
            raise ConfigurationError(
                f"section '{name}' has no 'plugin' key naming its plugin"
                if plugin is None
                else f"section '{name}': 'plugin' must be a name",
                file=source,
                line=value.key_lines.get("plugin", line),
                key=f"{name}.plugin",
            )
        section.body = value
        _warn_if_unknown(plugin, section, source, line)
        section.value = _validate(plugin, value, section, value)
        section.resolved = True
    else:
        raise ConfigurationError(
            f"section '{name}' must be a mapping with a 'plugin' key or a file path",
            file=source,
            line=line,
            key=name,
        )
    return section


def _warn_if_unknown(plugin: str, section: Section, file: str | Path, line: int) -> None:
    if plugin not in plugin_schemas().PLUGINS and plugin not in plugin_schemas().FREE_FORM:
        logger.warning(
            "%s, line %d: section '%s' uses plugin '%s', which this version does not know; "
            "it is kept as a plain dict",
            file,
            line,
            section.name,
            plugin,
        )


def _validate(plugin: str, body: dict[str, Any], section: Section, lines: _Map | None) -> Any:
    """The validated value of a section body (a model, or a dict for free-form plugins)."""
    from pydantic import ValidationError

    if plugin in plugin_schemas().FREE_FORM:
        return {key: value for key, value in plain(body).items() if key != "plugin"}
    model = plugin_schemas().PLUGINS.get(plugin)
    if model is None:
        return plain(body)
    try:
        return model.model_validate(plain(body))
    except ValidationError as error:
        raise _explain(error, section, lines) from None


def _explain(error: ValidationError, section: Section, lines: _Map | None) -> ConfigurationError:
    """Turn pydantic's errors into one message per problem, each with its line."""
    messages: list[tuple[int, str, str]] = []
    for problem in error.errors():
        location = [part for part in problem["loc"] if part != "__root__"]
        line = lines.line if lines is not None else section.line
        node: Any = lines
        for part in location:
            if isinstance(node, _Map) and part in node:
                line = node.key_lines[part]
                node = node[part]
            elif isinstance(node, _Seq) and isinstance(part, int) and part < len(node):
                line = node.item_lines[part]
                node = node[part]
            else:
                break
        message = problem["msg"].removeprefix("Value error, ")
        key = ".".join(str(part) for part in location)
        if problem["type"] == "missing":
            message = "required field is missing"
        text = f"section '{section.name}': " + (f"field '{key}': " if key else "") + message
        messages.append((line, key, text))
    line, key, first = messages[0]
    file = section.path if section.path is not None else section.file
    rest = [f"{file}, line {more_line}: {text}" for more_line, _, text in messages[1:]]
    return ConfigurationError("\n".join([first, *rest]), file=file, line=line, key=key or None)
