"""Parse python-zocalo's RabbitMQ topology file into the desired broker state.

This module reads and expands: a file validated against its schema
(:mod:`~zocalo.rabbitmq_admin.topology_file`) becomes a
:class:`~zocalo.rabbitmq_admin.desired_state.DesiredState`, each ``groups`` entry
expanded into its queues (and their dead-letter queues), broadcast exchanges and
bindings, every entry without ``vhost`` given the target vhost, and every binding
checked to connect things the file declares.

The file format is python-zocalo's (``zocalo.configure_rabbitmq``; COMPAT.md section 8.1):
top-level ``vhosts``, ``permissions``, ``policies``, ``exchanges``, ``groups``, ``bindings``.
One deliberate difference: an entry without ``vhost`` belongs to the *target vhost*
(``--vhost``, else the ``rabbitmqapi`` plugin's ``vhost``, else ``/``) rather than always
``/``, so one file (like ``contrib/rabbitmq-configuration.yaml``) can be applied to any
vhost. Unknown keys are errors: a misspelt ``dead-letter-routing-key-pattern`` would
otherwise silently drop every dead-letter queue.

User credentials (``--user-config DIR``) come from ``**/*.ini`` files with a ``[rabbitmq]``
section holding ``username``, ``password`` and optional ``tags`` (comma separated).
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from zocalo.errors import AdminError
from zocalo.rabbitmq_admin.desired_state import (
    BindingSpec,
    DesiredState,
    ExchangeSpec,
    PermissionSpec,
    PolicySpec,
    QueueSpec,
    UserSpec,
    VhostSpec,
)
from zocalo.rabbitmq_admin.topology_file import PLUGIN_EXCHANGE_TYPES, TopologyFile

__all__ = [
    "PLUGIN_EXCHANGE_TYPES",
    "BindingSpec",
    "DesiredState",
    "ExchangeSpec",
    "PermissionSpec",
    "PolicySpec",
    "QueueSpec",
    "TopologyError",
    "TopologyFile",
    "UserSpec",
    "VhostSpec",
    "load_users",
    "parse_topology",
]


class TopologyError(AdminError, ValueError):
    """The topology file (or a user file) is invalid; the message names file and key."""


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _describe_validation(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid RabbitMQ configuration:"]
    for problem in error.errors():
        lines.append(f"  {_location(problem['loc'])}: {problem['msg']}")
    return "\n".join(lines)


def parse_topology(path: Path, default_vhost: str = "/") -> DesiredState:
    """Read and validate ``path``; entries without ``vhost`` go to ``default_vhost``."""
    try:
        text = path.read_text()
    except OSError as error:
        raise TopologyError(f"{path}: cannot read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TopologyError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: expected a mapping with policies, exchanges and groups")
    try:
        parsed = TopologyFile.model_validate(data)
    except ValidationError as error:
        raise TopologyError(_describe_validation(path, error)) from None
    return _desired_state(path, parsed, default_vhost)


def _desired_state(path: Path, parsed: TopologyFile, default_vhost: str) -> DesiredState:
    def vhost_of(value: str | None) -> str:
        return default_vhost if value is None else value

    def fail(key: str, message: str) -> TopologyError:
        return TopologyError(f"{path}: {key}: {message}")

    vhosts: dict[str, VhostSpec] = {}
    for index, vhost_entry in enumerate(parsed.vhosts):
        if vhost_entry.name in vhosts:
            raise fail(f"vhosts[{index}].name", f"vhost {vhost_entry.name!r} declared twice")
        vhosts[vhost_entry.name] = VhostSpec(
            vhost_entry.name, vhost_entry.description, tuple(vhost_entry.tags), vhost_entry.tracing
        )

    permissions: dict[tuple[str, str], PermissionSpec] = {}
    for index, permission in enumerate(parsed.permissions):
        spec = PermissionSpec(
            vhost_of(permission.vhost),
            permission.user,
            permission.configure,
            permission.write,
            permission.read,
        )
        if (spec.vhost, spec.user) in permissions:
            raise fail(
                f"permissions[{index}]",
                f"permissions of {spec.user!r} on {spec.vhost!r} declared twice",
            )
        permissions[spec.vhost, spec.user] = spec

    policies: dict[tuple[str, str], PolicySpec] = {}
    for index, policy_entry in enumerate(parsed.policies):
        policy = PolicySpec(
            vhost_of(policy_entry.vhost),
            policy_entry.name,
            policy_entry.pattern,
            policy_entry.definition,
            policy_entry.priority,
            policy_entry.apply_to,
        )
        if (policy.vhost, policy.name) in policies:
            raise fail(f"policies[{index}].name", f"policy {policy.name!r} declared twice")
        policies[policy.vhost, policy.name] = policy

    exchanges: dict[tuple[str, str], ExchangeSpec] = {}

    def add_exchange(key: str, exchange: ExchangeSpec) -> None:
        identity = (exchange.vhost, exchange.name)
        if identity in exchanges and exchanges[identity] != exchange:
            raise fail(key, f"exchange {exchange.name!r} declared twice, differently")
        exchanges[identity] = exchange

    for index, exchange_entry in enumerate(parsed.exchanges):
        add_exchange(
            f"exchanges[{index}].name",
            ExchangeSpec(
                vhost_of(exchange_entry.vhost),
                exchange_entry.name,
                exchange_entry.type,
                exchange_entry.durable,
                exchange_entry.auto_delete,
                exchange_entry.internal,
                exchange_entry.arguments,
            ),
        )

    queues: dict[tuple[str, str], QueueSpec] = {}

    def add_queue(key: str, queue: QueueSpec) -> None:
        identity = (queue.vhost, queue.name)
        if identity in queues and queues[identity] != queue:
            raise fail(key, f"queue {queue.name!r} declared twice, differently")
        queues[identity] = queue

    bindings: dict[tuple[Any, ...], BindingSpec] = {}

    def add_binding(binding: BindingSpec) -> None:
        if binding.source:  # "" is the default exchange's implicit binding: nothing to do
            bindings.setdefault(binding.key(), binding)

    for index, group in enumerate(parsed.groups):
        vhost = vhost_of(group.vhost)
        settings = group.settings
        key = f"groups[{index}].names"
        if settings.broadcast:
            for name in group.names:
                add_exchange(key, ExchangeSpec(vhost, name, "fanout", True, False, False, {}))
            continue
        queue_settings = settings.queues
        pattern = queue_settings.dead_letter_routing_key_pattern
        for name in group.names:
            arguments: dict[str, Any] = {"x-queue-type": queue_settings.type}
            if queue_settings.type != "stream":
                arguments["x-single-active-consumer"] = settings.single_active_consumer
            if pattern:
                arguments["x-dead-letter-exchange"] = queue_settings.dead_letter_exchange
                arguments["x-dead-letter-routing-key"] = pattern.format(name=name)
            add_queue(key, QueueSpec(vhost, name, arguments))
            if pattern and queue_settings.dead_letter_queue_create:
                add_queue(
                    f"groups[{index}].settings.queues.dead-letter-routing-key-pattern",
                    QueueSpec(
                        vhost, pattern.format(name=name), {"x-queue-type": queue_settings.type}
                    ),
                )
            for source in group.bindings:
                add_binding(BindingSpec(vhost, source, "queue", name, name))

    for binding_entry in parsed.bindings:
        add_binding(
            BindingSpec(
                vhost_of(binding_entry.vhost),
                binding_entry.source,
                "exchange" if binding_entry.destination_type in ("e", "exchange") else "queue",
                binding_entry.destination,
                binding_entry.destination
                if binding_entry.routing_key is None
                else binding_entry.routing_key,
                binding_entry.arguments,
            )
        )

    # Every binding must connect things the file declares (or the broker's amq.* built-ins).
    for binding in bindings.values():
        if not binding.source.startswith("amq.") and (binding.vhost, binding.source) not in (
            exchanges
        ):
            raise fail(
                "bindings",
                f"binding {binding.describe()} (vhost {binding.vhost!r}): exchange "
                f"{binding.source!r} is not declared under 'exchanges' or a broadcast group",
            )
        declared = queues if binding.destination_type == "queue" else exchanges
        if (binding.vhost, binding.destination) not in declared and not (
            binding.destination.startswith("amq.")
        ):
            raise fail(
                "bindings",
                f"binding {binding.describe()} (vhost {binding.vhost!r}): "
                f"{binding.destination_type} {binding.destination!r} is not declared",
            )

    return DesiredState(
        source=path,
        vhosts=list(vhosts.values()),
        permissions=list(permissions.values()),
        policies=list(policies.values()),
        exchanges=list(exchanges.values()),
        queues=list(queues.values()),
        bindings=list(bindings.values()),
    )


def load_users(directory: Path) -> list[UserSpec]:
    """Users from every ``**/*.ini`` under ``directory`` (python-zocalo's ``--user-config``)."""
    if not directory.is_dir():
        raise TopologyError(f"{directory}: --user-config must be a directory")
    users: dict[str, UserSpec] = {}
    for path in sorted(directory.glob("**/*.ini")):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as error:
            raise TopologyError(f"{path}: not a valid ini file: {error}") from None
        if not parser.has_section("rabbitmq"):
            raise TopologyError(f"{path}: missing section [rabbitmq]")
        section = parser["rabbitmq"]
        for key in ("username", "password"):
            if not section.get(key, "").strip():
                raise TopologyError(f"{path}: [rabbitmq] {key} is missing or empty")
        name = section["username"].strip()
        if name in users:
            raise TopologyError(
                f"{path}: [rabbitmq] username {name!r} already declared in {users[name].source}"
            )
        tags = tuple(tag.strip() for tag in section.get("tags", "").split(",") if tag.strip())
        users[name] = UserSpec(name, section["password"], tags, path)
    return list(users.values())
