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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zocalo.config.lines import _Map, _Seq
from zocalo.errors import ConfigurationError

if TYPE_CHECKING:
    from types import ModuleType

    from pydantic import ValidationError

logger = logging.getLogger("zocalo.config")

CONFIG_VARIABLE = "ZOCALO_CONFIG"
DEFAULT_ENV_VARIABLE = "ZOCALO_DEFAULT_ENV"
RESERVED = frozenset({"version", "environments", "include"})
PLUGINS_GROUP = "plugins"


# --------------------------------------------------------------------------- YAML with lines


def _parse(text: str, source: str) -> Any:
    """YAML with line numbers; PyYAML loads only when a site file is actually read."""
    from zocalo.config.yaml_lines import parse

    return parse(text, source)


def _plain(value: Any) -> Any:
    """A deep copy with plain dicts and lists, for models and for callers."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _read(path: Path, what: str, *, referrer: str | None = None, line: int | None = None) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        if referrer is not None:
            raise ConfigurationError(
                f"{what}: cannot read {path}: {reason}", file=referrer, line=line
            ) from None
        raise ConfigurationError(f"cannot read {what}: {reason}", file=path) from None
    return _parse(text, str(path))


# --------------------------------------------------------------------------- the model


@dataclass
class _Section:
    """One named plugin configuration: inline, or a file path not read until needed."""

    name: str
    file: str
    line: int
    body: _Map | None = None
    path: Path | None = None
    value: Any = None  # the validated model or dict, once resolved
    resolved: bool = False


@dataclass
class _Ref:
    name: str
    file: str
    line: int


@dataclass
class _Environment:
    name: str
    file: str
    line: int
    alias: _Ref | None = None
    groups: dict[str, list[_Ref]] = field(default_factory=dict)

    def sections(self) -> list[_Ref]:
        """Groups alphabetically, ``plugins`` last, each section once (first place wins)."""
        order = sorted(group for group in self.groups if group != PLUGINS_GROUP)
        if PLUGINS_GROUP in self.groups:
            order.append(PLUGINS_GROUP)
        seen: dict[str, _Ref] = {}
        for group in order:
            for ref in self.groups[group]:
                seen.setdefault(ref.name, ref)
        return list(seen.values())


def _plugins() -> ModuleType:
    """The plugin schemas, imported on first use: pydantic is heavy, and every
    service's supervisor imports this module whether or not a site file exists."""
    from zocalo.config import plugins

    return plugins


def _validate(plugin: str, body: dict[str, Any], section: _Section, lines: _Map | None) -> Any:
    """The validated value of a section body (a model, or a dict for free-form plugins)."""
    from pydantic import ValidationError

    if plugin in _plugins().FREE_FORM:
        return {key: value for key, value in _plain(body).items() if key != "plugin"}
    model = _plugins().PLUGINS.get(plugin)
    if model is None:
        return _plain(body)
    try:
        return model.model_validate(_plain(body))
    except ValidationError as error:
        raise _explain(error, section, lines) from None


def _explain(error: ValidationError, section: _Section, lines: _Map | None) -> ConfigurationError:
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
        sections: dict[str, _Section] | None = None,
        environments: dict[str, _Environment] | None = None,
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
        return self._resolve(self._sections[name])[1]

    def transport_url(self, name: str | None = None) -> str | None:
        """See :func:`zocalo.config.plugins.transport_url`."""
        return _plugins().transport_url(self.plugins, name, active=self.active, path=self.path)

    def __repr__(self) -> str:
        return (
            f"<SiteConfiguration {self.path or '(none)'}: {len(self._environments)} environments,"
            f" {len(self._sections)} sections, active {list(self._active)}>"
        )

    # ----------------------------------------------------------------- activation

    def _resolve(self, section: _Section, environment: str | None = None) -> tuple[str, Any]:
        if not section.resolved:
            if section.path is not None:
                needed = f" (needed by environment '{environment}')" if environment else ""
                body = _read(
                    section.path,
                    f"section '{section.name}'{needed}",
                    referrer=section.file,
                    line=section.line,
                )
                if not isinstance(body, _Map) or not isinstance(body.get("plugin"), str):
                    raise ConfigurationError(
                        f"section '{section.name}': the file must hold a mapping with a "
                        "'plugin' key",
                        file=section.path,
                        line=getattr(body, "line", 1),
                        key="plugin",
                    )
                _warn_if_unknown(body["plugin"], section, section.path, body.key_lines["plugin"])
                section.body = body
            assert section.body is not None
            section.value = _validate(section.body["plugin"], section.body, section, section.body)
            section.resolved = True
        assert section.body is not None
        return section.body["plugin"], section.value

    def _target(self, name: str) -> _Environment:
        environment = self._environments[name]
        while environment.alias is not None:
            environment = self._environments[environment.alias.name]
        return environment

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
            for ref in self._target(name).sections():
                plugin, value = self._resolve(self._sections[ref.name], name)
                if plugin in _plugins().FREE_FORM:
                    self._plugins.setdefault(plugin, {}).update(value)
                    continue
                self._plugins[plugin] = value
                canonical = _plugins().CANONICAL.get(plugin)
                if canonical:
                    self._plugins[canonical] = value
            self._active.append(name)


def _warn_if_unknown(plugin: str, section: _Section, file: str | Path, line: int) -> None:
    if plugin not in _plugins().PLUGINS and plugin not in _plugins().FREE_FORM:
        logger.warning(
            "%s, line %d: section '%s' uses plugin '%s', which this version does not know; "
            "it is kept as a plain dict",
            file,
            line,
            section.name,
            plugin,
        )


# --------------------------------------------------------------------------- loading


class _Builder:
    """Accumulates sections and environments from the main file and its includes."""

    def __init__(self) -> None:
        self.sections: dict[str, _Section] = {}
        self.environments: dict[str, _Environment] = {}
        self.seen: set[Path] = set()

    def add_file(self, path: Path, *, main: bool, referrer: str | None, line: int | None) -> None:
        resolved = path.resolve()
        if resolved in self.seen:
            logger.debug("%s: already read, not including it again", path)
            return
        self.seen.add(resolved)
        source = str(path)
        data = _read(
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
            self._add_environments(data["environments"], data.key_lines["environments"], source)
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
        source, line = str(path), data.key_lines[name]
        if not isinstance(name, str):
            raise ConfigurationError(
                f"section name {name!r} must be a string", file=source, line=line
            )
        section = _Section(name=name, file=source, line=line)
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
            # Inline sections are checked now, so a typo fails every run, not just the
            # runs that activate it.
            section.value = _validate(plugin, value, section, value)
            section.resolved = True
        else:
            raise ConfigurationError(
                f"section '{name}' must be a mapping with a 'plugin' key or a file path",
                file=source,
                line=line,
                key=name,
            )
        previous = self.sections.get(name)
        if previous is not None:
            logger.info(
                "section '%s' from %s, line %d replaces the one from %s, line %d",
                name,
                source,
                line,
                previous.file,
                previous.line,
            )
        self.sections[name] = section

    def _add_environments(self, value: Any, line: int, source: str) -> None:
        if not isinstance(value, _Map):
            raise ConfigurationError(
                "'environments' must be a mapping of names",
                file=source,
                line=line,
                key="environments",
            )
        for name, definition in value.items():
            env_line = value.key_lines[name]
            if not isinstance(name, str):
                raise ConfigurationError(
                    f"environment name {name!r} must be a string", file=source, line=env_line
                )
            environment = _Environment(name=name, file=source, line=env_line)
            if isinstance(definition, str):
                environment.alias = _Ref(definition, source, env_line)
            elif isinstance(definition, _Seq):
                environment.groups[PLUGINS_GROUP] = self._refs(definition, source, env_line, name)
            elif isinstance(definition, _Map):
                for group, members in definition.items():
                    group_line = definition.key_lines[group]
                    if isinstance(members, str):
                        members = _Seq([members])
                        members.item_lines = [group_line]
                    if not isinstance(members, _Seq):
                        raise ConfigurationError(
                            f"environment '{name}': group '{group}' must be a section name "
                            "or a list of them",
                            file=source,
                            line=group_line,
                            key=f"environments.{name}.{group}",
                        )
                    environment.groups[str(group)] = self._refs(members, source, group_line, name)
            else:
                raise ConfigurationError(
                    f"environment '{name}' must be a list of sections, a mapping of groups, "
                    "or the name of another environment",
                    file=source,
                    line=env_line,
                    key=f"environments.{name}",
                )
            self._merge_environment(environment)

    @staticmethod
    def _refs(members: _Seq, source: str, line: int, environment: str) -> list[_Ref]:
        refs = []
        for member, member_line in zip(members, members.item_lines, strict=True):
            if not isinstance(member, str):
                raise ConfigurationError(
                    f"environment '{environment}': {member!r} is not a section name",
                    file=source,
                    line=member_line,
                    key=f"environments.{environment}",
                )
            refs.append(_Ref(member, source, member_line))
        return refs

    def _merge_environment(self, new: _Environment) -> None:
        old = self.environments.get(new.name)
        if old is None or old.alias is not None or new.alias is not None:
            if old is not None:
                logger.info(
                    "environment '%s' from %s replaces the one from %s",
                    new.name,
                    new.file,
                    old.file,
                )
            self.environments[new.name] = new
            return
        for group, refs in new.groups.items():
            if group == PLUGINS_GROUP:
                old.groups.setdefault(group, []).extend(refs)
            else:
                if group in old.groups:
                    logger.info(
                        "environment '%s': group '%s' from %s replaces the one from %s",
                        new.name,
                        group,
                        new.file,
                        old.file,
                    )
                old.groups[group] = refs

    def check(self) -> None:
        """Every reference resolves: sections exist, aliases end at a real environment."""
        for environment in self.environments.values():
            if environment.alias is not None:
                chain = [environment.name]
                current = environment
                while current.alias is not None:
                    target = current.alias.name
                    if target in chain:
                        raise ConfigurationError(
                            f"environment aliases form a cycle: {' -> '.join([*chain, target])}",
                            file=current.alias.file,
                            line=current.alias.line,
                            key=f"environments.{current.name}",
                        )
                    if target not in self.environments:
                        raise ConfigurationError(
                            f"environment '{current.name}' is an alias of '{target}', "
                            "which is not defined",
                            file=current.alias.file,
                            line=current.alias.line,
                            key=f"environments.{current.name}",
                        )
                    chain.append(target)
                    current = self.environments[target]
                continue
            for ref in environment.sections():
                if ref.name in RESERVED:
                    problem = f"'{ref.name}' is a reserved name, not a section"
                elif ref.name not in self.sections:
                    problem = f"section '{ref.name}' is not defined"
                else:
                    continue
                raise ConfigurationError(
                    f"environment '{environment.name}': {problem}",
                    file=ref.file,
                    line=ref.line,
                    key=f"environments.{environment.name}",
                )


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
    builder = _Builder()
    builder.add_file(path, main=True, referrer=None, line=None)
    builder.check()
    config = SiteConfiguration(path, builder.sections, builder.environments)
    if environments:
        config._activate(list(environments))
    elif os.environ.get(DEFAULT_ENV_VARIABLE, "").strip():
        default = os.environ[DEFAULT_ENV_VARIABLE].strip()
        config._activate([default], origin=f"${DEFAULT_ENV_VARIABLE}")
    elif "default" in builder.environments:
        config._activate(["default"], origin="default")
    return config
