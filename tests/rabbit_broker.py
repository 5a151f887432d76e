"""A private virtual host on the machine's RabbitMQ for one test session.

Tests never touch another vhost or another client's connections: each
session creates ``zocalo-test-<pid>`` and deletes it (and everything in it)
at the end.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import quote

HOST = os.environ.get("ZOCALO_TEST_RABBITMQ_HOST", "127.0.0.1")


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
