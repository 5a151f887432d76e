"""Which RabbitMQ management API ``zocalo.configure_rabbitmq`` talks to, and as whom.

A URL given by the caller wins over the site configuration's ``rabbitmqapi`` plugin, whose
``base_url`` may list several (the nodes of a cluster): they are tried in order and the
first that answers is used, so one node down does not stop the tool. The user and password
given win over the plugin's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zocalo.errors import AdminError
from zocalo.rabbitmq_admin.api import ManagementAPI, ManagementAPIError
from zocalo.transport.registry import redact_url

if TYPE_CHECKING:
    from zocalo.config.plugins import RabbitMQAPIConfig


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
        raise ManagementAPIError("; ".join(problems))


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
