"""The ``environments`` of a site configuration: which sections each one activates.

An environment is a list of section names (the group ``plugins``), a mapping of
named groups of them (activated alphabetically, ``plugins`` last, each section
once), or the name of another environment (an alias). An included file's
environment of the same name replaces each named group it gives and appends to
``plugins``. Apart from the loader so the rules of this one block, its syntax,
how includes merge it and that every name in it resolves, are in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from typing import Any

from zocalo.config.lines import _Map, _Seq
from zocalo.config.sections import RESERVED
from zocalo.errors import ConfigurationError

logger = logging.getLogger("zocalo.config")

#: The group a plain list of sections is, activated after every named group.
PLUGINS_GROUP = "plugins"


@dataclass
class SectionRef:
    """A section (or, for an alias, an environment) named at a file and line."""

    name: str
    file: str
    line: int


@dataclass
class Environment:
    name: str
    file: str
    line: int
    alias: SectionRef | None = None
    groups: dict[str, list[SectionRef]] = field(default_factory=dict)

    def sections(self) -> list[SectionRef]:
        """Groups alphabetically, ``plugins`` last, each section once (first place wins)."""
        order = sorted(group for group in self.groups if group != PLUGINS_GROUP)
        if PLUGINS_GROUP in self.groups:
            order.append(PLUGINS_GROUP)
        seen: dict[str, SectionRef] = {}
        for group in order:
            for ref in self.groups[group]:
                seen.setdefault(ref.name, ref)
        return list(seen.values())


def parse_environments(value: Any, line: int, source: str) -> Iterator[Environment]:
    """The environments of one file's ``environments`` block (at ``line`` of ``source``)."""
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
        environment = Environment(name=name, file=source, line=env_line)
        if isinstance(definition, str):
            environment.alias = SectionRef(definition, source, env_line)
        elif isinstance(definition, _Seq):
            environment.groups[PLUGINS_GROUP] = _refs(definition, source, env_line, name)
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
                environment.groups[str(group)] = _refs(members, source, group_line, name)
        else:
            raise ConfigurationError(
                f"environment '{name}' must be a list of sections, a mapping of groups, "
                "or the name of another environment",
                file=source,
                line=env_line,
                key=f"environments.{name}",
            )
        yield environment


def _refs(members: _Seq, source: str, line: int, environment: str) -> list[SectionRef]:
    refs = []
    for member, member_line in zip(members, members.item_lines, strict=True):
        if not isinstance(member, str):
            raise ConfigurationError(
                f"environment '{environment}': {member!r} is not a section name",
                file=source,
                line=member_line,
                key=f"environments.{environment}",
            )
        refs.append(SectionRef(member, source, member_line))
    return refs


def merge_environment(environments: dict[str, Environment], new: Environment) -> None:
    """Add ``new`` (from a file read later) to ``environments``, overriding as documented."""
    old = environments.get(new.name)
    if old is None or old.alias is not None or new.alias is not None:
        if old is not None:
            logger.info(
                "environment '%s' from %s replaces the one from %s",
                new.name,
                new.file,
                old.file,
            )
        environments[new.name] = new
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


def check_environments(environments: dict[str, Environment], sections: Container[str]) -> None:
    """Every reference resolves: sections exist, aliases end at a real environment."""
    for environment in environments.values():
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
                if target not in environments:
                    raise ConfigurationError(
                        f"environment '{current.name}' is an alias of '{target}', "
                        "which is not defined",
                        file=current.alias.file,
                        line=current.alias.line,
                        key=f"environments.{current.name}",
                    )
                chain.append(target)
                current = environments[target]
            continue
        for ref in environment.sections():
            if ref.name in RESERVED:
                problem = f"'{ref.name}' is a reserved name, not a section"
            elif ref.name not in sections:
                problem = f"section '{ref.name}' is not defined"
            else:
                continue
            raise ConfigurationError(
                f"environment '{environment.name}': {problem}",
                file=ref.file,
                line=ref.line,
                key=f"environments.{environment.name}",
            )


def resolve_alias(environments: dict[str, Environment], name: str) -> Environment:
    """The environment ``name`` stands for, following aliases (checked to end)."""
    environment = environments[name]
    while environment.alias is not None:
        environment = environments[environment.alias.name]
    return environment
