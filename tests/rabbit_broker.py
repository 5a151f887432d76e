"""A private virtual host on the machine's RabbitMQ for one test session.

Tests never touch another vhost or another client's connections: each
session creates ``zocalo-test-<pid>`` and deletes it (and everything in it)
at the end. Everything goes through the management API (``make test`` enables
the plugin), so the two addresses below are the only way the tests reach the
machine's broker. Point them at a closed port to show that a run needs no
RabbitMQ::

    ZOCALO_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:1 \\
    ZOCALO_TEST_RABBITMQ_MANAGEMENT_URL=http://127.0.0.1:1/api \\
        pytest -m "not rabbitmq"
"""

from __future__ import annotations

import os
from urllib.parse import quote

import requests

HOST = os.environ.get("ZOCALO_TEST_RABBITMQ_HOST", "127.0.0.1")
#: The machine's broker, without a vhost: each session's vhost is appended.
SERVER = os.environ.get("ZOCALO_TEST_RABBITMQ_URL", f"amqp://guest:guest@{HOST}:5672").rstrip("/")
#: The machine's management API.
MANAGEMENT = os.environ.get("ZOCALO_TEST_RABBITMQ_MANAGEMENT_URL", f"http://{HOST}:15672/api")
CREDENTIALS = ("guest", "guest")
#: Seconds any one management call may take.
TIMEOUT = 60


class PrivateVhost:
    """Create on enter, delete on exit."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"zocalo-test-{os.getpid()}"
        self._path = quote(self.name, safe="")

    @property
    def url(self) -> str:
        return f"{SERVER}/{self._path}"

    def _call(self, method: str, path: str, **arguments: object) -> requests.Response:
        response = requests.request(
            method, f"{MANAGEMENT}/{path}", auth=CREDENTIALS, timeout=TIMEOUT, **arguments
        )
        if not (response.ok or (method == "DELETE" and response.status_code == 404)):
            response.raise_for_status()
        return response

    def __enter__(self) -> PrivateVhost:
        self._call("PUT", f"vhosts/{self._path}")
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        self._call("PUT", f"permissions/{self._path}/guest", json=everything)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call("DELETE", f"vhosts/{self._path}")

    def queue_names(self) -> set[str]:
        """Every queue in the vhost (names only: no statistics needed)."""
        response = self._call("GET", f"queues/{self._path}", params={"columns": "name"})
        return {queue["name"] for queue in response.json()}

    def delete_queues(self, names: set[str]) -> None:
        """Delete ``names`` (already gone is fine).

        The machine's RabbitMQ runs with the default ``ulimit -n`` of 1024, and its
        file handle cache also counts the segment files of every quorum queue: a
        session that kept all its tests' queues until the end ran out of handles,
        and the broker stopped accepting connections until the vhost was deleted.
        """
        for name in names:
            self._call("DELETE", f"queues/{self._path}/{quote(name, safe='')}")
