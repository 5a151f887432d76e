"""Parse python-zocalo's RabbitMQ topology file into the desired broker state.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BUILTIN_EXCHANGE_TYPES = frozenset({"direct", "topic", "headers", "fanout"})

#: Exchange types provided by plugins, and the plugin to enable for each.
PLUGIN_EXCHANGE_TYPES = {
    "x-delayed-message": "rabbitmq_delayed_message_exchange",
    "x-consistent-hash": "rabbitmq_consistent_hash_exchange",
    "x-random": "rabbitmq_random_exchange",
    "x-recent-history": "rabbitmq_recent_history_exchange",
    "x-jms-topic": "rabbitmq_jms_topic_exchange",
    "x-modulus-hash": "rabbitmq_sharding",
}


class TopologyError(ValueError):
    """The topology file (or a user file) is invalid; the message names file and key."""


# -- the file, as written -------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class VhostEntry(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    tracing: bool = False

    @field_validator("tags", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [tag.strip() for tag in value.split(",") if tag.strip()]
        return value

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == "/":
            raise ValueError("the default vhost '/' is never managed; remove it from 'vhosts'")
        return value


class PermissionEntry(_Model):
    vhost: str | None = None
    user: str = Field(min_length=1)
    configure: str
    write: str
    read: str


class PolicyEntry(_Model):
    name: str = Field(min_length=1)
    vhost: str | None = None
    pattern: str = "^amq."
    definition: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    apply_to: Literal[
        "queues", "exchanges", "all", "classic_queues", "quorum_queues", "streams"
    ] = Field(default="queues", alias="apply-to")


class ExchangeEntry(_Model):
    name: str = Field(min_length=1)
    vhost: str | None = None
    type: str = "direct"
    durable: bool | None = None
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("amq."):
            raise ValueError(f"{value!r}: exchange names starting 'amq.' are reserved")
        return value

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in BUILTIN_EXCHANGE_TYPES and not value.startswith("x-"):
            raise ValueError(
                f"{value!r} is not an exchange type (direct, topic, headers, fanout, "
                "or a plugin type such as x-delayed-message)"
            )
        return value


class QueueSettings(_Model):
    type: Literal["classic", "quorum", "stream"] = "classic"
    dead_letter_routing_key_pattern: str | None = Field(
        default=None, alias="dead-letter-routing-key-pattern"
    )
    dead_letter_exchange: str = Field(default="", alias="dead-letter-exchange")
    dead_letter_queue_create: bool = Field(default=True, alias="dead-letter-queue-create")

    @field_validator("dead_letter_routing_key_pattern")
    @classmethod
    def _formattable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(name="queue")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"{value!r}: the only placeholder allowed is {{name}} ({error})"
                ) from None
        return value


class ExchangeSettings(_Model):
    type: str = "direct"


class GroupSettings(_Model):
    broadcast: bool = False
    single_active_consumer: bool = False
    queues: QueueSettings = Field(default_factory=QueueSettings)
    exchanges: ExchangeSettings = Field(default_factory=ExchangeSettings)


class GroupEntry(_Model):
    names: list[str] = Field(min_length=1)
    vhost: str | None = None
    bindings: list[str] = Field(default_factory=lambda: [""])
    settings: GroupSettings = Field(default_factory=GroupSettings)

    @field_validator("names")
    @classmethod
    def _non_empty_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name:
                raise ValueError("names must not be empty strings")
            if name.startswith("amq."):
                raise ValueError(f"{name!r}: names starting 'amq.' are reserved")
        return value


class BindingEntry(_Model):
    source: str
    destination: str = Field(min_length=1)
    destination_type: Literal["q", "queue", "e", "exchange"] = "q"
    routing_key: str | None = None
    vhost: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)


class TopologyFile(_Model):
    vhosts: list[VhostEntry] = Field(default_factory=list)
    permissions: list[PermissionEntry] = Field(default_factory=list)
    policies: list[PolicyEntry]
    exchanges: list[ExchangeEntry]
    groups: list[GroupEntry]
    bindings: list[BindingEntry] = Field(default_factory=list)


# -- the desired state ------------------------------------------------------------------------


@dataclass
class VhostSpec:
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    tracing: bool = False


@dataclass
class PermissionSpec:
    vhost: str
    user: str
    configure: str
    write: str
    read: str


@dataclass
class PolicySpec:
    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int
    apply_to: str

    def body(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "definition": self.definition,
            "priority": self.priority,
            "apply-to": self.apply_to,
        }


@dataclass
class ExchangeSpec:
    vhost: str
    name: str
    type: str
    durable: bool | None  # None: not sent, the broker's HTTP API default applies
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "auto_delete": self.auto_delete,
            "internal": self.internal,
            "arguments": self.arguments,
        }
        if self.durable is not None:
            body["durable"] = self.durable
        return body


@dataclass
class QueueSpec:
    vhost: str
    name: str
    arguments: dict[str, Any]
    durable: bool = True
    auto_delete: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "arguments": self.arguments,
        }


@dataclass
class BindingSpec:
    vhost: str
    source: str
    destination_type: str  # "queue" or "exchange", as the API lists them
    destination: str
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (
            self.vhost,
            self.source,
            self.destination_type,
            self.destination,
            self.routing_key,
            _freeze(self.arguments),
        )

    def describe(self) -> str:
        source = self.source or "(default exchange)"
        text = f"{source} -> {self.destination_type} {self.destination} key {self.routing_key!r}"
        if self.arguments:
            text += f" arguments {self.arguments}"
        return text


@dataclass
class UserSpec:
    name: str
    password: str
    tags: tuple[str, ...]
    source: Path


@dataclass
class DesiredState:
    """Everything the file asks for, with defaults filled in."""

    source: Path
    vhosts: list[VhostSpec]
    permissions: list[PermissionSpec]
    policies: list[PolicySpec]
    exchanges: list[ExchangeSpec]
    queues: list[QueueSpec]
    bindings: list[BindingSpec]
    users: list[UserSpec] | None = None  # None: --user-config not given, users untouched

    @property
    def managed_vhosts(self) -> list[str]:
        """Every vhost the file names (explicitly or through the default): the tool's scope."""
        names: dict[str, None] = {}
        for collection in (
            self.vhosts,
            self.permissions,
            self.policies,
            self.exchanges,
            self.queues,
            self.bindings,
        ):
            for item in collection:
                names[item.name if isinstance(item, VhostSpec) else item.vhost] = None
        return list(names)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


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
    for index, entry in enumerate(parsed.vhosts):
        if entry.name in vhosts:
            raise fail(f"vhosts[{index}].name", f"vhost {entry.name!r} declared twice")
        vhosts[entry.name] = VhostSpec(
            entry.name, entry.description, tuple(entry.tags), entry.tracing
        )

    permissions: dict[tuple[str, str], PermissionSpec] = {}
    for index, entry in enumerate(parsed.permissions):
        spec = PermissionSpec(
            vhost_of(entry.vhost), entry.user, entry.configure, entry.write, entry.read
        )
        if (spec.vhost, spec.user) in permissions:
            raise fail(
                f"permissions[{index}]",
                f"permissions of {spec.user!r} on {spec.vhost!r} declared twice",
            )
        permissions[spec.vhost, spec.user] = spec

    policies: dict[tuple[str, str], PolicySpec] = {}
    for index, entry in enumerate(parsed.policies):
        policy = PolicySpec(
            vhost_of(entry.vhost),
            entry.name,
            entry.pattern,
            entry.definition,
            entry.priority,
            entry.apply_to,
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

    for index, entry in enumerate(parsed.exchanges):
        add_exchange(
            f"exchanges[{index}].name",
            ExchangeSpec(
                vhost_of(entry.vhost),
                entry.name,
                entry.type,
                entry.durable,
                entry.auto_delete,
                entry.internal,
                entry.arguments,
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

    for entry in parsed.bindings:
        add_binding(
            BindingSpec(
                vhost_of(entry.vhost),
                entry.source,
                "exchange" if entry.destination_type in ("e", "exchange") else "queue",
                entry.destination,
                entry.destination if entry.routing_key is None else entry.routing_key,
                entry.arguments,
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
