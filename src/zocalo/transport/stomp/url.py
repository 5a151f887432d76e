"""``stomp://`` URLs: where the broker is, who we are, and our own query options.

Everything a URL can say is read here, once, before anything connects: the
broker (and further failover nodes), the credentials, the destination prefix
(python-workflows' ``--stomp-prfx``, the site configuration's ``prefix``) and
the options below. A URL that cannot work is refused in one line with its
password hidden, never later as a connection error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from zocalo.errors import InvalidURL
from zocalo.transport.base import DEFAULT_DELIVERY_LIMIT
from zocalo.transport.options import Option, cluster_node, parse_options, split_url
from zocalo.transport.registry import redact_url

DEFAULT_PORT = 61613

#: The URL options ``stomp://...?...`` understands.
OPTIONS = (
    Option("prefix", str, ""),
    Option("vhost", str, ""),
    Option("hosts", str, ""),
    Option("delivery_limit", int, DEFAULT_DELIVERY_LIMIT, at_least=1),
    Option("heartbeat", int, 30, at_least=0, at_most=3600),
    Option("timeout", float, 10.0, above=0),
)


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to open a STOMP connection: nodes, credentials, timings."""

    #: (host, port) of every broker node, tried in order.
    nodes: tuple[tuple[str, int], ...]
    #: None for anonymous access (no user and no password in the URL).
    login: str | None
    passcode: str | None
    #: The destination prefix, without its trailing dot ("" for none).
    prefix: str
    #: The CONNECT frame's ``host`` header ("": the broker's host name). RabbitMQ reads
    #: it as the virtual host to use (``?vhost=/`` for its default one).
    vhost: str
    #: Seconds between heart-beats each way (0: none).
    heartbeat: int
    #: Seconds to wait for the broker: to connect, and to answer a request.
    timeout: float
    #: The URL with its password hidden, for messages.
    safe_url: str


def endpoint(url: str, given: dict[str, Any] | None = None) -> tuple[Endpoint, dict[str, Any]]:
    """The :class:`Endpoint` of ``url``, and every option's value (``given``: keyword
    arguments of the transport's constructor, which win over the URL)."""
    parts = split_url(url)
    options = parse_options(url, OPTIONS, given)
    if parts.path not in ("", "/"):
        raise InvalidURL(
            f"transport URL {redact_url(url)}: a STOMP URL has no path (got {parts.path!r}); "
            "name a destination prefix with ?prefix=..."
        )
    nodes = [(parts.hostname or "localhost", parts.port or DEFAULT_PORT)]
    for node in filter(None, (node.strip() for node in options["hosts"].split(","))):
        nodes.append(cluster_node(url, node, DEFAULT_PORT))
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    anonymous = not user and not password
    return (
        Endpoint(
            nodes=tuple(nodes),
            login=None if anonymous else user or "",
            passcode=None if anonymous else password or "",
            prefix=options["prefix"].strip().rstrip("."),
            vhost=options["vhost"],
            heartbeat=options["heartbeat"],
            timeout=options["timeout"],
            safe_url=redact_url(url),
        ),
        options,
    )
