"""Service status as python-workflows broadcasts it, so either side's monitor shows both.

Status dicts go to the ``transient.status`` topic at least every
``STATUS_INTERVAL`` seconds with a 15 s expiration, carrying the reference's
fields (``host``, ``status``, ``statustext``, ``service``, ``serviceclass``,
``utilization``, ``workflows``) plus ours (``zocalo``, ``uptime``,
``messages``, ``restarts``, ...).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from zocalo.service.commands import COMMAND_TOPIC, COMMANDS_KEPT_FOR, command_matches

if TYPE_CHECKING:
    from zocalo.transport.base import Delivery, Transport

log = logging.getLogger("zocalo.service.status")

STATUS_TOPIC = "transient.status"
STATUS_INTERVAL = 6.0
STATUS_EXPIRATION = 15.0
UTILIZATION_WINDOW = 6.0
#: Worker exit status for "this service cannot be loaded": restarting would not help.
CANNOT_LOAD = 2
#: Stand-in exit status for "a shutdown command came": the supervisor stops.
SHUTDOWN_COMMANDED = 4
#: Worker exit status for "replace me" (memory grew past ``--max-memory``): the
#: supervisor starts a fresh worker at once, and does not count it as a crash.
RECYCLE = 5
#: The signals that stop a supervisor and its children (systemd, Slurm, Ctrl-C).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


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
    from importlib.metadata import PackageNotFoundError, version  # not in the supervisor

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


class Identity(NamedTuple):
    """Who a status broadcast speaks for: the supervisor, which outlives its workers.

    ``host`` (``<reversed fqdn>.<supervisor pid>``) is what ``zocalo.shutdown HOST``
    names; ``started_at`` is the supervisor's ``time.monotonic()`` start (the clock is
    system-wide, so a child can use it); ``restarts`` counts workers started before.
    """

    host: str
    pid: int
    started_at: float
    restarts: int
    #: For a stand-in: the ``time.monotonic()`` at which the service restarts.
    restart_at: float | None = None
    #: The supervisor's own queue bound to the ``command`` topic. Each of its children
    #: consumes it in turn, so what is broadcast between two children (a restart)
    #: waits there instead of reaching nobody. None: a plain broadcast subscription.
    commands: str | None = None


#: How often the broadcaster looks at the service's state; a change goes out on the next
#: look. Sampling at 0.1 s cost an idle service 6x the CPU of python-workflows' frontend.
POLL_INTERVAL = 0.5


class StatusBroadcaster:
    """Broadcasts a service's status on ``transient.status`` and obeys ``command``.

    It lives in the process that holds the broker connection (the worker, or the
    stand-in that covers a restart delay), so the supervisor needs neither a broker
    connection nor a thread. ``read`` returns the current status and counters;
    ``on_shutdown(reason)`` is called once for a shutdown command aimed at us.
    """

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        *,
        service: str | None,
        service_class: str | None,
        read: Callable[[], tuple[Status, dict[str, Any]]],
        on_shutdown: Callable[[str], None],
        interval: float = STATUS_INTERVAL,
        started_as: str | None = None,
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.service = service
        self.service_class = service_class
        #: Every name a shutdown command may target this service by.
        self.names = {service_class, started_as or service_class}
        self.read = read
        self.on_shutdown = on_shutdown
        self.interval = interval
        self.utilization = Utilization()
        self.status = Status.NONE
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._shutdown_requested = False
        self._bind_again_at = float("inf")
        self._note: Any = None

    def start(self) -> None:
        """Subscribe to commands and start broadcasting (the transport is connected)."""
        if self.identity.commands is None:
            self.transport.subscribe_broadcast(COMMAND_TOPIC, self._on_command)
        else:
            self._bind_commands()
            self.transport.subscribe(self.identity.commands, self._on_command)
        self._thread = threading.Thread(target=self._run, name="zocalo-status", daemon=True)
        self._thread.start()

    def finish(self, final: Status) -> None:
        """Stop the periodic broadcasts and send ``final`` (before the transport closes)."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        _, stats = self.read()  # the last counters, with the final status
        self._record(final)
        self.broadcast(stats)

    def report(self, stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """The status dict as python-workflows' monitor reads it, plus our fields."""
        stats = stats or {}
        return status_message(
            host=self.identity.host,
            status=self.status,
            service=self.service,
            service_class=self.service_class,
            utilization=self.utilization.report(),
            extra={
                "uptime": round(time.monotonic() - self.identity.started_at, 1),
                "restarts": self.identity.restarts,
                "messages": int(stats.get("handled", 0)),
                "failed": int(stats.get("failed", 0)),
                "dead_lettered": int(stats.get("dead_lettered", 0)),
                "pid": self.identity.pid,
                "worker_pid": os.getpid(),
                **self._restart_in(),
                **({"note": str(stats["note"])} if stats.get("note") else {}),
            },
        )

    def _restart_in(self) -> dict[str, float]:
        if self.identity.restart_at is None:
            return {}
        return {"restart_in": round(max(0.0, self.identity.restart_at - time.monotonic()), 1)}

    def broadcast(self, stats: dict[str, Any] | None = None) -> None:
        if not self.transport.connected:
            return
        try:
            self.transport.broadcast(
                STATUS_TOPIC,
                json.dumps(self.report(stats)),
                expiration=STATUS_EXPIRATION,
                timeout=10,
            )
        except Exception as error:  # a status is never worth a crash
            log.warning("could not broadcast status: %s", error)

    def _record(self, status: Status) -> bool:
        if status == self.status:
            return False
        self.status = status
        self.utilization.record(status)
        return True

    def _bind_commands(self) -> None:
        """(Re)bind the command queue: binding again keeps it for another while."""
        assert self.identity.commands is not None
        self.transport.bind_queue(self.identity.commands, COMMAND_TOPIC, expires=COMMANDS_KEPT_FOR)
        self._bind_again_at = time.monotonic() + COMMANDS_KEPT_FOR / 4

    def _run(self) -> None:
        next_due = 0.0
        while not self._done.is_set():
            status, stats = self.read()
            now = time.monotonic()
            if now >= self._bind_again_at:
                try:
                    self._bind_commands()
                except Exception as error:  # tried again at the next turn
                    log.warning("could not renew the command queue: %s", error)
            noted = stats.get("note") != self._note  # a new note goes out at once, too
            self._note = stats.get("note")
            if self._record(status) or noted or now >= next_due:
                self.broadcast(stats)
                next_due = now + self.interval
            self._done.wait(POLL_INTERVAL)

    def _on_command(self, delivery: Delivery) -> None:
        try:
            self._obey(delivery)
        finally:  # acknowledged once obeyed: a command is never lost to a dying child
            if delivery.ackable:
                try:
                    self.transport.ack(delivery)
                except Exception as error:  # it comes again: obeying twice is harmless
                    log.warning("could not acknowledge %s: %s", delivery.describe(), error)

    def _obey(self, delivery: Delivery) -> None:
        try:
            command = json.loads(delivery.body)
        except ValueError:
            return
        if not command_matches(command, self.identity.host, self.names):
            return
        if command.get("command") != "shutdown":
            log.info("ignoring command %s", command)
        elif not self._shutdown_requested:
            self._shutdown_requested = True
            self.on_shutdown(f"shutdown command {command}")
