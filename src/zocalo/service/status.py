"""Service status as python-workflows broadcasts it, so either side's monitor shows both.

Status dicts go to the ``transient.status`` topic at least every
``STATUS_INTERVAL`` seconds with a 15 s expiration, carrying the reference's
fields (``host``, ``status``, ``statustext``, ``service``, ``serviceclass``,
``utilization``, ``workflows``) plus ours (``zocalo``, ``uptime``,
``messages``, ``restarts``, ...).
"""

from __future__ import annotations

import enum
import os
import socket
import time
from collections import deque
from importlib.metadata import PackageNotFoundError, version
from typing import Any

STATUS_TOPIC = "transient.status"
COMMAND_TOPIC = "command"
STATUS_INTERVAL = 6.0
STATUS_EXPIRATION = 15.0
UTILIZATION_WINDOW = 6.0
#: Worker exit status for "this service cannot be loaded": restarting would not help.
CANNOT_LOAD = 2


class Status(enum.IntEnum):
    """The reference's status codes (COMPAT 3.1)."""

    NONE = -1
    TEARDOWN = -2
    NEW = 0
    STARTING = 1
    IDLE = 2
    TIMER = 3
    PROCESSING = 4
    SHUTDOWN = 5
    END = 6
    ERROR = 7

    @property
    def text(self) -> str:
        return _TEXT[self]


_TEXT = {
    Status.NONE: "no service loaded",
    Status.TEARDOWN: "shutdown",
    Status.NEW: "constructing",
    Status.STARTING: "starting",
    Status.IDLE: "idle",
    Status.TIMER: "timer event",
    Status.PROCESSING: "processing",
    Status.SHUTDOWN: "shutting down",
    Status.END: "shutdown",
    Status.ERROR: "error",
}


def zocalo_version() -> str:
    try:
        return version("zocalo")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def host_id(pid: int | None = None) -> str:
    """Reversed host name components, then the pid: ``uk.ac.example.ws1.12345``."""
    parts = socket.getfqdn().split(".")
    return ".".join([*reversed(parts), str(pid if pid is not None else os.getpid())])


class Utilization:
    """Fraction of the last few seconds spent in each status."""

    def __init__(self, window: float = UTILIZATION_WINDOW) -> None:
        self.window = window
        self.changes: deque[tuple[float, Status]] = deque()

    def record(self, status: Status, at: float | None = None) -> None:
        self.changes.append((time.monotonic() if at is None else at, status))

    def report(self, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        start = now - self.window
        while len(self.changes) > 1 and self.changes[1][0] <= start:
            self.changes.popleft()
        spent: dict[str, float] = {}
        entries = list(self.changes)
        for index, (since, status) in enumerate(entries):
            until = entries[index + 1][0] if index + 1 < len(entries) else now
            seconds = min(until, now) - max(since, start)
            if seconds > 0:
                key = str(int(status))
                spent[key] = spent.get(key, 0.0) + seconds
        return {key: round(seconds / self.window, 4) for key, seconds in spent.items()}


def status_message(
    *,
    host: str,
    status: Status,
    service: str | None,
    service_class: str | None,
    utilization: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One status broadcast, readable by python-workflows' status monitor."""
    message: dict[str, Any] = {
        "host": host,
        "status": int(status),
        "statustext": status.text,
        "service": service,
        "serviceclass": service_class,
        "utilization": utilization,
        "workflows": f"zocalo {zocalo_version()}",
        "zocalo": zocalo_version(),
    }
    message.update(extra or {})
    for variable, field in (("JOB_ID", "cluster_JOB_ID"), ("SGE_CELL", "cluster_SGE_CELL")):
        if os.environ.get(variable):
            message[field] = os.environ[variable]
    return message
