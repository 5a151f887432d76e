"""Map a transport URL to its implementation, importing only the one needed."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from zocalo.errors import InvalidURL
from zocalo.transport.base import Transport

#: URL scheme -> "module:Class". Brokers join here as they land.
_SCHEMES: dict[str, str] = {
    "memory": "zocalo.transport.memory:MemoryTransport",
    "sqlite": "zocalo.transport.sqlite:SqliteTransport",
    "amqp": "zocalo.transport.rabbitmq:RabbitMQTransport",
    "amqps": "zocalo.transport.rabbitmq:RabbitMQTransport",
}

ENVIRONMENT_VARIABLE = "ZOCALO_TRANSPORT"


def default_transport_url() -> str:
    """``$ZOCALO_TRANSPORT``, else the embedded broker in the user's data directory."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        return configured
    directory = Path(platformdirs.user_data_dir("zocalo", appauthor=False))
    return f"sqlite:///{directory / 'broker.db'}"


def transport_class(url: str) -> type[Transport]:
    """The Transport subclass that handles ``url``'s scheme."""
    scheme = urlsplit(url).scheme
    if "://" not in url or not scheme:
        raise InvalidURL(f"transport URL {url!r} has no scheme (expected e.g. memory://)")
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise InvalidURL(f"unknown transport scheme {scheme!r} in {url!r}; known: {known}")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_transport(url: str | None = None, **options: object) -> Transport:
    """A not-yet-connected transport for ``url`` (default: :func:`default_transport_url`)."""
    url = url or default_transport_url()
    return transport_class(url)(url, **options)  # type: ignore[arg-type]


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
