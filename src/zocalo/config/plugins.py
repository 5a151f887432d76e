"""Schemas for the plugin sections of a site configuration, and the transport URL they imply.

Each known plugin has a pydantic model. Keys a model does not declare are ignored, as
python-zocalo ignores them, so a facility file written for a newer plugin still loads.
Numbers are accepted where strings are expected (``password: 12345``), and passwords are
held as :class:`pydantic.SecretStr` so that printing a configuration never shows them.

Models can also be read like the dicts python-zocalo hands out: ``smtp["from"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from zocalo.errors import ConfigurationError

Port = Annotated[int, Field(ge=1, le=65535)]


class PluginConfig(BaseModel):
    """Common base: the ``plugin`` key, lenient about extra keys and numbers-as-strings."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        coerce_numbers_to_str=True,
        populate_by_name=True,
    )

    plugin: str

    def __getitem__(self, key: str) -> Any:
        """Dict-style access by YAML key (``smtp["from"]``), secrets unwrapped."""
        for name, field in type(self).model_fields.items():
            if key in (name, field.alias):
                value = getattr(self, name)
                return value.get_secret_value() if isinstance(value, SecretStr) else value
        if self.model_extra and key in self.model_extra:
            return self.model_extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class PikaConfig(PluginConfig):
    """RabbitMQ over AMQP. ``host`` and ``port`` may be comma lists (a cluster).

    One port applies to every host; otherwise there must be a port per host.
    """

    host: str
    port: str
    username: str
    password: SecretStr
    vhost: str

    @field_validator("port")
    @classmethod
    def _ports_are_integers(cls, value: str) -> str:
        ports = _split(value)
        if not ports:
            raise ValueError("no port given")
        for port in ports:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{port!r} is not a port number (1-65535)")
        return ",".join(ports)

    @model_validator(mode="after")
    def _hosts_match_ports(self) -> PikaConfig:
        hosts, ports = _split(self.host), _split(self.port)
        if not hosts:
            raise ValueError("host: no host given")
        if len(ports) not in (1, len(hosts)):
            raise ValueError(
                f"port: {len(ports)} ports for {len(hosts)} hosts "
                "(give one port for all, or one per host)"
            )
        return self

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` for every broker node, in the order given."""
        hosts, ports = _split(self.host), [int(p) for p in _split(self.port)]
        if len(ports) == 1:
            ports = ports * len(hosts)
        return list(zip(hosts, ports, strict=True))

    def url(self) -> str:
        """``amqp://user:pass@host:port/vhost``; further nodes go in ``?hosts=h2:p2,h3:p3``.

        User, password and vhost are percent-quoted, so the vhost ``/`` becomes ``%2F``.
        """
        (host, port), *others = self.addresses
        url = (
            f"amqp://{quote(self.username, safe='')}:"
            f"{quote(self.password.get_secret_value(), safe='')}@{host}:{port}/"
            f"{quote(self.vhost, safe='')}"
        )
        if others:
            url += "?hosts=" + ",".join(f"{h}:{p}" for h, p in others)
        return url


class StompConfig(PluginConfig):
    """ActiveMQ (or another broker) over STOMP."""

    host: str
    port: Port
    username: str
    password: SecretStr
    prefix: str

    def url(self) -> str:
        """``stomp://user:pass@host:port?prefix=...`` with every part percent-quoted."""
        url = (
            f"stomp://{quote(self.username, safe='')}:"
            f"{quote(self.password.get_secret_value(), safe='')}@{self.host}:{self.port}"
        )
        if self.prefix:
            url += f"?prefix={quote(self.prefix, safe='')}"
        return url


class TransportConfig(PluginConfig):
    """The transport a tool uses when ``-t`` is not given: a class name or a URL."""

    default: str


class OpenTelemetryConfig(PluginConfig):
    host: str
    port: Port
    timeout: float = 10

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}/v1/traces"


class GraylogConfig(PluginConfig):
    """A GELF endpoint (deprecated in python-zocalo in favour of ``logging``)."""

    protocol: Annotated[
        Literal["UDP", "TCP"],
        BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value),
    ]
    host: str
    port: Port


_NOT_INCREMENTAL = ("filters", "formatters", "handlers")


def _declares_handlers(config: dict[str, Any]) -> bool:
    """Whether a dictConfig defines things an incremental dictConfig may not."""
    if any(key in config for key in _NOT_INCREMENTAL):
        return True
    loggers = [config.get("root") or {}, *(config.get("loggers") or {}).values()]
    return any(
        isinstance(logger, dict) and any(key in logger for key in _NOT_INCREMENTAL)
        for logger in loggers
    )


class LoggingConfig(PluginConfig):
    """A :func:`logging.config.dictConfig` plus ``verbose``: one increment per ``-v``."""

    model_config = ConfigDict(extra="allow")

    version: int = 1
    incremental: bool = False
    disable_existing_loggers: bool = False
    verbose: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _increments_are_incremental(self) -> LoggingConfig:
        if self.incremental and _declares_handlers(self.model_extra or {}):
            raise ValueError(
                "an incremental configuration may not define filters, formatters, handlers"
            )
        for level, increment in enumerate(self.verbose, start=1):
            if increment.get("incremental", True) and _declares_handlers(increment):
                raise ValueError(
                    f"verbose level {level}: an incremental configuration may not define "
                    "filters, formatters or handlers"
                )
        return self

    def dict_config(self, verbosity: int = 0) -> list[dict[str, Any]]:
        """The dictConfig dicts to apply, in order: the base, then one per verbosity level."""
        base = {
            "version": self.version,
            "incremental": self.incremental,
            "disable_existing_loggers": self.disable_existing_loggers,
            **(self.model_extra or {}),
        }
        steps = [base]
        for increment in self.verbose[:verbosity]:
            steps.append({"version": self.version, "incremental": True, **increment})
        return steps


class RabbitMQAPIConfig(PluginConfig):
    """The RabbitMQ management API. ``base_url`` may list several; the first reachable wins."""

    base_url: str
    username: str
    password: SecretStr
    vhost: str = "/"

    @property
    def base_urls(self) -> list[str]:
        return _split(self.base_url)


class SmtpConfig(PluginConfig):
    host: str
    port: Port
    from_: str | None = Field(default=None, alias="from")

    @field_validator("from_")
    @classmethod
    def _looks_like_an_address(cls, value: str | None) -> str | None:
        if value is not None:
            local, at, domain = value.rpartition("<")[2].rstrip(">").partition("@")
            if not (local and at and domain):
                raise ValueError(f"{value!r} is not an e-mail address")
        return value


class JmxConfig(PluginConfig):
    host: str
    port: Port
    base_url: str
    username: str
    password: SecretStr

    def read_url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}/{self.base_url.strip('/')}/read/{path}"


class SlurmConfig(PluginConfig):
    """The Slurm REST API (python-zocalo also knows this plugin as ``iris``)."""

    url: str
    api_version: str
    user: str | None = None
    user_token: str | None = None


class ClusterConfig(PluginConfig):
    """Where the cluster submission service runs jobs: ``slurm`` (the ``slurm`` section
    says how) or ``local`` (on the service's own host; ``jobs``: the jobs' folder;
    ``max_jobs``: how many run at once, the others waiting PENDING)."""

    backend: Literal["local", "slurm"]
    jobs: str | None = None
    max_jobs: Annotated[int, Field(ge=1)] | None = None


#: plugin name -> model. ``storage`` is free-form and handled by the loader.
PLUGINS: dict[str, type[PluginConfig]] = {
    "pika": PikaConfig,
    "stomp": StompConfig,
    "transport": TransportConfig,
    "opentelemetry": OpenTelemetryConfig,
    "graylog": GraylogConfig,
    "logging": LoggingConfig,
    "rabbitmqapi": RabbitMQAPIConfig,
    "smtp": SmtpConfig,
    "jmx": JmxConfig,
    "slurm": SlurmConfig,
    "iris": SlurmConfig,
    "cluster": ClusterConfig,
}

#: Plugins with no schema: any mapping is accepted, and several blocks merge.
FREE_FORM = frozenset({"storage"})

#: Aliases: also exposed under the canonical name.
CANONICAL = {"iris": "slurm"}

#: The names python-zocalo's ``-t`` accepts, and the plugin each one reads.
from zocalo.config.names import TRANSPORT_NAMES  # noqa: E402  (shared with the registry)


def transport_url(
    plugins: Mapping[str, Any],
    name: str | None = None,
    *,
    active: Sequence[str] = (),
    path: Path | None = None,
) -> str | None:
    """The broker URL an activated configuration implies (its ``plugins``, the
    environments it ``active``-ated and its file ``path``, for the error message).

    ``name`` is ``PikaTransport`` or ``StompTransport`` (python-zocalo's ``-t`` values), or
    None: then the ``transport`` plugin's ``default`` decides (a class name, or a URL used as
    is), else ``pika`` if configured, else ``stomp``, else None.
    """
    if name is None:
        chosen = plugins.get("transport")
        if isinstance(chosen, TransportConfig):
            if "://" in chosen.default:
                return chosen.default
            name = chosen.default
        elif "pika" in plugins:
            name = "PikaTransport"
        elif "stomp" in plugins:
            name = "StompTransport"
        else:
            return None
    plugin = TRANSPORT_NAMES.get(name)
    if plugin is None:
        known = ", ".join(TRANSPORT_NAMES)
        raise ConfigurationError(f"unknown transport {name!r}: expected a URL or one of {known}")
    section = plugins.get(plugin)
    if not isinstance(section, PikaConfig | StompConfig):
        if active:
            where = "environment " + ", ".join(repr(env) for env in active)
        else:
            where = "no environment is active"
        source = f"{path}: " if path else "no site configuration (ZOCALO_CONFIG): "
        raise ConfigurationError(
            f"{source}transport {name} needs a '{plugin}' section, and {where} "
            f"{'provides none' if active else '(use -e ENV)'}"
        )
    return section.url()
