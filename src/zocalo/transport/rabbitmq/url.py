"""``amqp://`` and ``amqps://`` URLs as pika connection parameters, one per cluster node.

Everything a URL can say is read here, once, before anything connects: the
node list, credentials and virtual host, the TLS files, and our own query
options. A URL that cannot work (an unknown option, a TLS file that does not
load, a malformed cluster node) is refused in one line with its password
hidden, never later as a connection error.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote

import pika

from zocalo.errors import InvalidURL
from zocalo.transport.base import DEFAULT_DELIVERY_LIMIT
from zocalo.transport.options import Option, cluster_node, existing_file, parse_options, split_url
from zocalo.transport.registry import redact_url

#: The URL options ``amqp://...?...`` understands.
OPTIONS = (
    Option("hosts", str, ""),
    Option("delivery_limit", int, DEFAULT_DELIVERY_LIMIT, at_least=1),
    Option("cafile", existing_file),
    Option("certfile", existing_file),
    Option("keyfile", existing_file),
    Option("connection_name", str, "zocalo"),
    Option("heartbeat", int, 30, at_least=0, at_most=65535),
    Option("timeout", float, 10.0, above=0),
)


def connection_parameters(url: str) -> tuple[list[pika.ConnectionParameters], dict[str, Any]]:
    """pika parameters for ``url`` (one per cluster node), and our own query options.

    ``?hosts=h2:p2,h3:p3`` names further nodes of a cluster, tried in order after
    the URL's own host (python-zocalo's comma-separated ``pika`` hosts map here).
    """
    parts = split_url(url)
    options = parse_options(url, OPTIONS)
    tls = parts.scheme == "amqps"
    context = _tls_context(url, options) if tls else None
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    credentials = pika.PlainCredentials(
        unquote(parts.username or "guest"), unquote(parts.password or "guest")
    )
    return [
        _node_parameters(host, port, vhost, credentials, context, options)
        for host, port in cluster_nodes(url)
    ], options


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """(host, AMQP port) of every node ``url`` names: its own host, then ``?hosts=``."""
    parts = split_url(url)
    options = parse_options(url, OPTIONS)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    nodes = [(parts.hostname or "localhost", parts.port or default_port)]
    for node in filter(None, (node.strip() for node in options["hosts"].split(","))):
        nodes.append(cluster_node(url, node, default_port))
    return nodes


def _tls_context(url: str, options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of an ``amqps://`` URL, its CA and client certificate loaded."""
    try:
        context = ssl.create_default_context(cafile=options.get("cafile"))
        if options.get("certfile"):
            context.load_cert_chain(options["certfile"], options.get("keyfile"))
    except (OSError, ssl.SSLError) as error:
        files = ", ".join(
            f"{name}={options[name]}" for name in ("cafile", "certfile", "keyfile") if options[name]
        )
        raise InvalidURL(
            f"transport URL {redact_url(url)}: cannot load the TLS files ({files}): {error}"
        ) from None
    return context


def _node_parameters(
    host: str,
    port: int,
    vhost: str,
    credentials: pika.PlainCredentials,
    tls_context: ssl.SSLContext | None,
    options: dict[str, Any],
) -> pika.ConnectionParameters:
    """One node's parameters; over TLS its certificate is checked against its own name."""
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=credentials,
        ssl_options=pika.SSLOptions(tls_context, host) if tls_context else None,
        heartbeat=int(options.get("heartbeat", 30)),
        connection_attempts=1,
        socket_timeout=float(options.get("timeout", 10)),
        client_properties={"connection_name": options.get("connection_name", "zocalo")},
    )
