"""Which RabbitMQ management API a tool talks to, and as whom: the one home of that
decision, for ``zocalo.configure_rabbitmq``, ``zocalo queues``, the dead-letter tools
and Schlockmeister.

A URL given by the caller wins over the site configuration's ``rabbitmqapi`` plugin, whose
``base_url`` may list several (the nodes of a cluster). Without either, the tools that
start from an AMQP URL (:func:`management_target`) look on each node it names (its host,
then ``?hosts=``) at the management plugin's default port. The URLs are tried in order
and the first that answers is used, so one node down does not stop the tool. The user and
password given win over the plugin's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from zocalo.errors import AdminError
from zocalo.rabbitmq_admin.api import ManagementAPI, ManagementAPIError, api_base_url
from zocalo.transport.rabbitmq.url import cluster_nodes
from zocalo.transport.registry import redact_url

if TYPE_CHECKING:
    from zocalo.config.plugins import RabbitMQAPIConfig


#: The management plugin's default ports, for AMQP and AMQP over TLS.
MANAGEMENT_PORTS = {"amqp": ("http", 15672), "amqps": ("https", 15671)}


class ManagementAPIUnconfigured(AdminError):
    """Nothing says where the management API is, or as whom to log in."""


class NoManagementURL(ManagementAPIUnconfigured):
    """No management API URL was given and the site configuration names none."""


class NoManagementCredentials(ManagementAPIUnconfigured):
    """A management API URL but no user or password to use on it."""


@dataclass(frozen=True)
class ManagementEndpoints:
    """The management API URLs to try, in order, and the account to use on each."""

    base_urls: tuple[str, ...]
    username: str
    password: str = field(repr=False)

    def connect(self, timeout: float = 30.0) -> ManagementAPI:
        """A client for the first API that answers; ManagementAPIError naming each failure
        (in order, ``; `` between them) when none does."""
        problems = []
        for url in self.base_urls:
            api = ManagementAPI(url, self.username, self.password, timeout=timeout)
            try:
                api.overview()
            except ManagementAPIError as error:
                problems.append(str(error))
                api.close()
                continue
            return api
        if len(problems) == 1:
            raise ManagementAPIError(problems[0])
        tried = ", ".join(redact_url(api_base_url(url)) for url in self.base_urls)
        raise ManagementAPIError(
            f"no RabbitMQ management API answered (tried {tried}): {'; '.join(problems)}"
        )


@dataclass(frozen=True)
class ManagementTarget(ManagementEndpoints):
    """The management APIs of one broker, and the vhost of its AMQP URL to look at."""

    vhost: str = "/"


def management_endpoints(
    api_url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    plugin: RabbitMQAPIConfig | None = None,
) -> ManagementEndpoints:
    """Where the management API is (``api_url``, else every URL of ``plugin``) and as whom
    (``username``/``password``, else the plugin's). Raises :class:`NoManagementURL` or
    :class:`NoManagementCredentials`."""
    urls: Sequence[str] = [api_url] if api_url else (plugin.base_urls if plugin else [])
    if not urls:
        raise NoManagementURL("no management API is configured")
    if plugin is not None:
        username = plugin.username if username is None else username
        password = plugin.password.get_secret_value() if password is None else password
    if username is None or password is None:
        missing = " and ".join(
            name for name, value in (("user", username), ("password", password)) if value is None
        )
        where = redact_url(urls[0])
        raise NoManagementCredentials(f"no {missing} for the management API at {where}")
    return ManagementEndpoints(tuple(urls), username, password)


def management_target(
    amqp_url: str, override: str | None = None, plugin: RabbitMQAPIConfig | Any = None
) -> ManagementTarget:
    """The management APIs for the broker of ``amqp_url``, and the URL's vhost.

    ``override`` (``http[s]://[user:pass@]host:port[/api]``) wins, then the site
    configuration's ``rabbitmqapi`` plugin (all its URLs); otherwise the API is on each
    node the AMQP URL names, at the plugin's default port (15672, or 15671 over TLS).
    Credentials come from the override URL, else the plugin, else the AMQP URL.
    """
    parts = urlsplit(amqp_url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    username = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    if override:
        given = urlsplit(override)
        if given.username:
            username, password = unquote(given.username), unquote(given.password or "")
        base = api_base_url(given._replace(netloc=_host_port(given.hostname, given.port)).geturl())
        return ManagementTarget((base,), username, password, vhost)
    if plugin is not None:
        endpoints = management_endpoints(plugin=plugin)
        urls = tuple(api_base_url(url) for url in endpoints.base_urls)
        return ManagementTarget(urls, endpoints.username, endpoints.password, vhost)
    scheme, port = MANAGEMENT_PORTS.get(parts.scheme, MANAGEMENT_PORTS["amqp"])
    hosts = dict.fromkeys(host for host, _ in cluster_nodes(amqp_url))
    urls = tuple(f"{scheme}://{_host_port(host, port)}/api" for host in hosts)
    return ManagementTarget(urls, username, password, vhost)


def _host_port(host: str | None, port: int | None) -> str:
    """``host:port`` for a URL, an IPv6 address in brackets."""
    netloc = host or "localhost"
    if ":" in netloc:
        netloc = f"[{netloc}]"
    return f"{netloc}:{port}" if port else netloc
