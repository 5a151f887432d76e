"""The broker state a topology file asks for: plain dataclasses, defaults filled in.

The meeting point of :mod:`~zocalo.rabbitmq_admin.topology` (which builds it from
the file) and :mod:`~zocalo.rabbitmq_admin.plan` (which compares it with the
broker): neither needs the other's machinery, and the plan does not load pydantic
or PyYAML. Each spec knows the body the management API takes for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
