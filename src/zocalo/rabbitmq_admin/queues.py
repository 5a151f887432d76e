"""Queue depths of a RabbitMQ vhost through the management API (``zocalo queues``).

AMQP itself can only tell the depth of a queue one knows the name of (a passive
declare), and not its unacknowledged messages; the management API lists every
queue of a vhost with its ready and unacknowledged messages and its consumers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from zocalo.rabbitmq_admin.api import ManagementAPI, api_base_url
from zocalo.transport.base import QueueStats
from zocalo.transport.rabbitmq import delay as delays

#: The management plugin's default ports, for AMQP and AMQP over TLS.
MANAGEMENT_PORTS = {"amqp": ("http", 15672), "amqps": ("https", 15671)}
#: The row standing for every message waiting in the delay topology's wait queues.
DELAYED_ROW = f"{delays.PREFIX}.*"


@dataclass(frozen=True)
class ManagementTarget:
    """Where the management API is, as whom, and which vhost to look at."""

    base_url: str
    username: str
    password: str
    vhost: str

    def connect(self) -> ManagementAPI:
        return ManagementAPI(self.base_url, self.username, self.password)


def management_target(
    amqp_url: str,
    override: str | None = None,
    plugin: Any = None,
) -> ManagementTarget:
    """The management API for the broker of ``amqp_url``, and the URL's vhost.

    ``override`` (``http[s]://[user:pass@]host:port[/api]``) wins, then the site
    configuration's ``rabbitmqapi`` plugin; otherwise the API is on the AMQP host
    at the plugin's default port (15672, or 15671 over TLS). Credentials come from
    the override URL, else the plugin, else the AMQP URL.
    """
    parts = urlsplit(amqp_url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    username = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    if override:
        given = urlsplit(override)
        netloc = given.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if given.port:
            netloc += f":{given.port}"
        base = api_base_url(given._replace(netloc=netloc).geturl())
        if given.username:
            username, password = unquote(given.username), unquote(given.password or "")
        return ManagementTarget(base, username, password, vhost)
    if plugin is not None:
        return ManagementTarget(
            api_base_url(plugin.base_urls[0]),
            plugin.username,
            plugin.password.get_secret_value(),
            vhost,
        )
    scheme, port = MANAGEMENT_PORTS.get(parts.scheme, MANAGEMENT_PORTS["amqp"])
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return ManagementTarget(f"{scheme}://{host}:{port}/api", username, password, vhost)


def queue_stats(api: ManagementAPI, vhost: str) -> list[QueueStats]:
    """Every queue of ``vhost`` (empty ones and those with only consumers included).

    A broadcast subscriber's exclusive queue is left out. The delay topology's wait
    queues are one row, :data:`DELAYED_ROW`, their messages counted as delayed (which
    queue each is for is in its routing key, which the API does not show).
    """
    stats: list[QueueStats] = []
    waiting = 0
    for queue in api.queues(vhost):
        name = queue.get("name", "")
        if queue.get("exclusive"):
            continue
        ready = int(queue.get("messages_ready") or 0)
        unacked = int(queue.get("messages_unacknowledged") or 0)
        if name.startswith(f"{delays.PREFIX}."):
            waiting += ready + unacked
            continue
        stats.append(QueueStats(name, ready, 0, unacked, int(queue.get("consumers") or 0)))
    if waiting:
        stats.append(QueueStats(DELAYED_ROW, 0, waiting, 0))
    return sorted(stats, key=lambda entry: entry.queue)
