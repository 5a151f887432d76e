"""A small client for the RabbitMQ management HTTP API (``rabbitmq_management``).

Only what ``zocalo.configure_rabbitmq`` (and its tests) need. Every call raises
:class:`ManagementAPIError` on a non-2xx answer, naming the method, path and the broker's
reason.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any
from urllib.parse import quote

import requests

from zocalo.errors import AdminError, one_line
from zocalo.transport.registry import redact_url

#: The password hashing RabbitMQ uses by default (and the only one we write).
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


class ManagementAPIError(AdminError):
    """A management API call failed (HTTP error or connection problem)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def hash_password(password: str, salt: bytes | str | None = None) -> str:
    """RabbitMQ's salted SHA-256: ``base64(salt + sha256(salt + utf8(password)))``.

    ``salt`` is 4 bytes, or an existing hash whose salt is reused (to compare a password
    with a stored hash); None draws a random salt.
    """
    if salt is None:
        salt_bytes = os.urandom(4)
    elif isinstance(salt, str):
        salt_bytes = base64.b64decode(salt)[:4]
    else:
        salt_bytes = salt[:4]
    digest = hashlib.sha256(salt_bytes + password.encode("utf-8")).digest()
    return base64.b64encode(salt_bytes + digest).decode("ascii")


def password_matches(password: str, stored_hash: str, algorithm: str) -> bool:
    """Whether ``password`` is the one behind a stored SHA-256 ``stored_hash``."""
    if algorithm != HASHING_ALGORITHM or not stored_hash:
        return False
    try:
        return hash_password(password, salt=stored_hash) == stored_hash
    except ValueError:
        return False


def api_base_url(url: str) -> str:
    """Normalise a management URL: ``http://host:15672`` and ``.../api/`` both give ``.../api``."""
    url = url.strip().rstrip("/")
    if url.rsplit("/", 1)[-1] != "api":
        url += "/api"
    return url


def _segment(value: str) -> str:
    return quote(value, safe="")


def _exchange_segment(name: str) -> str:
    # The default exchange is called "amq.default" in management API paths.
    return _segment(name or "amq.default")


class ManagementAPI:
    """The management API at ``base_url`` (``http://host:15672/api``), basic authentication."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0):
        self.base_url = api_base_url(base_url)
        self.username = username
        self._session = requests.Session()
        self._session.auth = (username, password)
        self._session.headers["content-type"] = "application/json"
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ManagementAPI({self.base_url!r}, user={self.username!r})"

    def close(self) -> None:
        self._session.close()

    # -- plumbing -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        *segments: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """``method`` on ``base_url/seg1/seg2...`` (segments are quoted here); decoded JSON."""
        path = "/".join(segments)
        url = f"{self.base_url}/{path}"
        try:
            response = self._session.request(
                method, url, json=json, params=params, timeout=self.timeout
            )
        except requests.RequestException as error:
            raise ManagementAPIError(
                f"cannot reach the RabbitMQ management API at {redact_url(self.base_url)}: "
                f"{one_line(str(error))}"
            ) from error
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            try:
                reason = response.json().get("reason", "")
            except ValueError:
                reason = response.text.strip()
            raise ManagementAPIError(
                f"{method} /{path} failed: HTTP {response.status_code} {reason}".rstrip(),
                status=response.status_code,
                reason=str(reason),
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # -- broker ---------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        return self.request("GET", "overview")

    def exchange_types(self) -> set[str]:
        return {entry["name"] for entry in self.overview().get("exchange_types", [])}

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "whoami")

    # -- vhosts ---------------------------------------------------------------------------

    def vhosts(self) -> list[dict[str, Any]]:
        return self.request("GET", "vhosts")

    def get_vhost(self, name: str) -> dict[str, Any] | None:
        return self.request("GET", "vhosts", _segment(name), missing_ok=True)

    def put_vhost(
        self,
        name: str,
        description: str = "",
        tags: list[str] | tuple[str, ...] = (),
        tracing=False,
    ) -> None:
        body = {"description": description, "tags": ",".join(tags), "tracing": tracing}
        self.request("PUT", "vhosts", _segment(name), json=body)

    def delete_vhost(self, name: str) -> None:
        self.request("DELETE", "vhosts", _segment(name), missing_ok=True)

    # -- users and permissions ------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        return self.request("GET", "users")

    def put_user(self, name: str, password_hash: str, tags: list[str] | tuple[str, ...]) -> None:
        body = {
            "password_hash": password_hash,
            "hashing_algorithm": HASHING_ALGORITHM,
            "tags": ",".join(tags),
        }
        self.request("PUT", "users", _segment(name), json=body)

    def delete_user(self, name: str) -> None:
        self.request("DELETE", "users", _segment(name), missing_ok=True)

    def permissions(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", "vhosts", _segment(vhost), "permissions")

    def put_permission(self, vhost: str, user: str, configure: str, write: str, read: str):
        body = {"configure": configure, "write": write, "read": read}
        self.request("PUT", "permissions", _segment(vhost), _segment(user), json=body)

    def delete_permission(self, vhost: str, user: str) -> None:
        self.request("DELETE", "permissions", _segment(vhost), _segment(user), missing_ok=True)

    # -- policies -------------------------------------------------------------------------

    def policies(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", "policies", _segment(vhost))

    def put_policy(self, vhost: str, name: str, body: dict[str, Any]) -> None:
        self.request("PUT", "policies", _segment(vhost), _segment(name), json=body)

    def delete_policy(self, vhost: str, name: str) -> None:
        self.request("DELETE", "policies", _segment(vhost), _segment(name), missing_ok=True)

    # -- exchanges ------------------------------------------------------------------------

    def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", "exchanges", _segment(vhost))

    def put_exchange(self, vhost: str, name: str, body: dict[str, Any]) -> None:
        self.request("PUT", "exchanges", _segment(vhost), _exchange_segment(name), json=body)

    def delete_exchange(self, vhost: str, name: str) -> None:
        self.request(
            "DELETE", "exchanges", _segment(vhost), _exchange_segment(name), missing_ok=True
        )

    def publish(
        self, vhost: str, exchange: str, routing_key: str, payload: str, properties=None
    ) -> bool:
        """Publish one message (tests and diagnostics); True if it was routed."""
        body = {
            "properties": properties or {},
            "routing_key": routing_key,
            "payload": payload,
            "payload_encoding": "string",
        }
        answer = self.request(
            "POST", "exchanges", _segment(vhost), _exchange_segment(exchange), "publish", json=body
        )
        return bool(answer and answer.get("routed"))

    # -- queues ---------------------------------------------------------------------------

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", "queues", _segment(vhost))

    def get_queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", "queues", _segment(vhost), _segment(name), missing_ok=True)

    def put_queue(self, vhost: str, name: str, body: dict[str, Any]) -> None:
        self.request("PUT", "queues", _segment(vhost), _segment(name), json=body)

    def delete_queue(self, vhost: str, name: str) -> None:
        self.request("DELETE", "queues", _segment(vhost), _segment(name), missing_ok=True)

    # -- bindings -------------------------------------------------------------------------

    def bindings(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", "bindings", _segment(vhost))

    def create_binding(
        self,
        vhost: str,
        source: str,
        destination_type: str,
        destination: str,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> None:
        self.request(
            "POST",
            "bindings",
            _segment(vhost),
            "e",
            _exchange_segment(source),
            _type_segment(destination_type),
            _segment(destination),
            json={"routing_key": routing_key, "arguments": arguments},
        )

    def delete_binding(
        self, vhost: str, source: str, destination_type: str, destination: str, properties_key: str
    ) -> None:
        self.request(
            "DELETE",
            "bindings",
            _segment(vhost),
            "e",
            _exchange_segment(source),
            _type_segment(destination_type),
            _segment(destination),
            _segment(properties_key) if properties_key else "~",
            missing_ok=True,
        )


def _type_segment(destination_type: str) -> str:
    return "e" if destination_type in ("e", "exchange") else "q"
