"""The topology file as written: pydantic models of python-zocalo's YAML format.

Apart from :mod:`~zocalo.rabbitmq_admin.topology` (which expands a validated file
into the :class:`~zocalo.rabbitmq_admin.desired_state.DesiredState`) so that the
rules of the format (which keys exist, their defaults, what a value may be) are
in one place and read as a schema, and the expansion reads as plain code.
Unknown keys are errors (``extra="forbid"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
