"""Map a transport URL to its implementation, importing only the one needed; and decide
which URL a tool uses when none is given (:func:`resolve_broker_url`, the one home of that
rule)."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import platformdirs

from zocalo.config import SiteConfiguration
from zocalo.config.names import TRANSPORT_NAMES
from zocalo.errors import InvalidURL, UnsupportedFeature
from zocalo.transport.base import Capability, Transport

#: URL scheme -> "module:Class". Brokers join here as they land.
_SCHEMES: dict[str, str] = {
    "memory": "zocalo.transport.memory:MemoryTransport",
    "sqlite": "zocalo.transport.sqlite:SqliteTransport",
    "amqp": "zocalo.transport.rabbitmq:RabbitMQTransport",
    "amqps": "zocalo.transport.rabbitmq:RabbitMQTransport",
    "stomp": "zocalo.transport.stomp:StompTransport",
}

ENVIRONMENT_VARIABLE = "ZOCALO_TRANSPORT"
_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def embedded_broker_url() -> str:
    """The embedded broker in the user's data directory: the URL when nothing names one."""
    directory = Path(platformdirs.user_data_dir("zocalo", appauthor=False))
    return f"sqlite:///{directory / 'broker.db'}"


def resolve_broker_url(
    given: str | None = None,
    site_config: SiteConfiguration | None = None,
    *,
    given_as: str = "transport",
    cross_process: bool = False,
) -> str:
    """The broker URL to use; the first of these that names one wins:

    1. ``given`` (a tool's ``-t/--transport``, called ``given_as`` in errors);
    2. ``$ZOCALO_TRANSPORT`` (empty counts as unset);
    3. the site configuration: its ``transport`` plugin's ``default``, else its ``pika``
       section, else its ``stomp`` section;
    4. the embedded broker in the user's data directory (:func:`embedded_broker_url`).

    ``given`` and ``$ZOCALO_TRANSPORT`` are a URL (anything with ``://``), used as given, or
    python-zocalo's ``PikaTransport`` / ``StompTransport``, which take the broker from the
    site configuration's ``pika`` / ``stomp`` section. ``cross_process``: also check the
    scheme, and refuse a broker other processes cannot reach (``memory://``), for a tool
    whose messages another process reads. Raises InvalidURL (not a URL nor a name; with
    ``cross_process`` an unknown scheme), ConfigurationError (a name whose section is
    missing) or UnsupportedFeature (an in-process broker), each in one line.
    """
    config = site_config if site_config is not None else SiteConfiguration()
    value, source = given, given_as
    if value is None:
        value, source = os.environ.get(ENVIRONMENT_VARIABLE) or None, f"${ENVIRONMENT_VARIABLE}"
    if value is None:
        url = config.transport_url(None)
    elif "://" in value:
        url = value
    elif value in TRANSPORT_NAMES:
        url = config.transport_url(value)
    else:
        raise InvalidURL(
            f"{source} {redact_url(value)!r} is neither a URL (e.g. amqp://user:pass@host/vhost) "
            f"nor one of {', '.join(TRANSPORT_NAMES)}"
        )
    url = url or embedded_broker_url()
    if cross_process and Capability.CROSS_PROCESS not in transport_class(url).capabilities:
        raise UnsupportedFeature(
            f"{redact_url(url)} is an in-process broker: another process cannot reach it, "
            "so what this command sends would vanish. Use a broker other processes share."
        )
    return url


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
    """A not-yet-connected transport for ``url`` (default: :func:`resolve_broker_url`)."""
    url = url or resolve_broker_url()
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
