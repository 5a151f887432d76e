"""A private virtual host on the machine's RabbitMQ for one test session.

Tests never touch another vhost or another client's connections: each
session creates ``zocalo-test-<pid>`` and deletes it (and everything in it)
at the end.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import quote

import requests

HOST = os.environ.get("ZOCALO_TEST_RABBITMQ_HOST", "127.0.0.1")
#: The machine's management API (``make test`` enables the plugin).
MANAGEMENT = f"http://{HOST}:15672/api"


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


class PrivateVhost:
    """Create on enter, delete on exit."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"zocalo-test-{os.getpid()}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:5672/{quote(self.name, safe='')}"

    def __enter__(self) -> PrivateVhost:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc: object) -> None:
        rabbitmqctl("delete_vhost", self.name)

    def queue_names(self) -> set[str]:
        """Every queue in the vhost, through the management API (no statistics needed)."""
        response = requests.get(
            f"{MANAGEMENT}/queues/{quote(self.name, safe='')}",
            params={"columns": "name"},
            auth=("guest", "guest"),
            timeout=60,
        )
        response.raise_for_status()
        return {queue["name"] for queue in response.json()}

    def delete_queues(self, names: set[str]) -> None:
        """Delete ``names`` (already gone is fine).

        The machine's RabbitMQ runs with the default ``ulimit -n`` of 1024, and its
        file handle cache also counts the segment files of every quorum queue: a
        session that kept all its tests' queues until the end ran out of handles,
        and the broker stopped accepting connections until the vhost was deleted.
        """
        vhost = quote(self.name, safe="")
        with requests.Session() as session:
            for name in names:
                response = session.delete(
                    f"{MANAGEMENT}/queues/{vhost}/{quote(name, safe='')}",
                    auth=("guest", "guest"),
                    timeout=60,
                )
                if response.status_code not in (204, 404):
                    response.raise_for_status()
