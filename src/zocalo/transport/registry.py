"""Map a transport URL to its implementation, importing only the one needed."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

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
_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def default_transport_url() -> str:
    """``$ZOCALO_TRANSPORT``, else the embedded broker in the user's data directory."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        return configured
    directory = Path(platformdirs.user_data_dir("zocalo", appauthor=False))
    return f"sqlite:///{directory / 'broker.db'}"


def transport_class(url: str) -> type[Transport]:
    """The Transport subclass that handles ``url``'s scheme."""
    scheme, separator, _ = url.partition("://")
    if not separator or not scheme:
        raise InvalidURL(
            f"transport URL {redact_url(url)!r} has no scheme (expected e.g. memory://)"
        )
    target = _SCHEMES.get(scheme.lower())
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise InvalidURL(
            f"unknown transport scheme {scheme!r} in {redact_url(url)!r}; known: {known}"
        )
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_transport(url: str | None = None, **options: object) -> Transport:
    """A not-yet-connected transport for ``url`` (default: :func:`default_transport_url`)."""
    url = url or default_transport_url()
    return transport_class(url)(url, **options)  # type: ignore[arg-type]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the one way a URL is printed or logged.

    Works on text that is not a valid URL too (a bad port, an unclosed IPv6 bracket,
    one slash missing): those are exactly the URLs error messages quote. The password
    is what follows the first ``:`` of the user part, up to the last ``@`` before the
    query, so an unquoted ``@`` or ``:`` in it is hidden as well.
    """
    end = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    scheme = _SCHEME_PREFIX.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@", 0, end)
    if at < 0:
        at = url.find("@", start)  # a "?" or "#" inside the password itself
    if at < 0:
        return url
    user, colon, _password = url[start:at].partition(":")
    if not colon or "/" in user:
        return url  # no password, or an "@" inside a path (sqlite:///dir@x/broker.db)
    return f"{url[: start + len(user)]}:***{url[at:]}"
