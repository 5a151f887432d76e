"""The supervisor (python-workflows' "frontend"): runs a service in a worker process.

It starts the worker as a fresh interpreter (``python -m zocalo.service.worker``),
restarts it after a crash with growing delays (``restart=True``), broadcasts
the service's status on ``transient.status``, obeys shutdown commands on the
``command`` topic, and on SIGTERM/SIGINT stops the worker cleanly: the message
in hand is finished, prefetched ones go back to the queue.

The worker holds the read end of a pipe from us; if we die, however we die,
it sees end-of-file and stops, so no orphan keeps messages unacknowledged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from zocalo.errors import ZocaloError
from zocalo.service.status import (
    CANNOT_LOAD,
    COMMAND_TOPIC,
    STATUS_EXPIRATION,
    STATUS_INTERVAL,
    STATUS_TOPIC,
    Status,
    Utilization,
    host_id,
    status_message,
)
from zocalo.transport.base import Delivery, Transport
from zocalo.transport.registry import ENVIRONMENT_VARIABLE, create_transport

log = logging.getLogger("zocalo.service.supervisor")

#: A worker that ran at least this long before exiting counts as healthy.
HEALTHY_RUN = 10.0
MAX_BACKOFF = 60.0
#: Consecutive quick crashes after which the service is reported as crash-looping.
CRASH_LOOP = 5


@dataclass
class SupervisorSettings:
    service: str
    transport: str
    restart: bool = False
    log_format: str = "text"
    verbose: bool = False
    stop_timeout: float = 60.0
    status_interval: float = STATUS_INTERVAL
    worker_arguments: list[str] = field(default_factory=list)


def backoff(quick_crashes: int) -> float:
    """Seconds to wait before restart number ``quick_crashes`` in a row."""
    return 0.0 if quick_crashes <= 0 else min(MAX_BACKOFF, 0.1 * 2 ** (quick_crashes - 1))


def command_matches(command: Any, host: str, service_class: str | None) -> bool:
    """Whether a broadcast command targets this supervisor (reference rules, plus ``all``)."""
    if not isinstance(command, dict):
        return False
    if command.get("all") is True:
        return True
    if "host" not in command and "service" not in command:
        return False
    if "host" in command and command["host"] != host:
        return False
    return "service" not in command or command["service"] == service_class


class Supervisor:
    """Run, watch and restart one service's worker process."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        self.host = host_id()
        self.status = Status.NONE
        self.service_name: str | None = None
        self.service_class: str | None = None
        self.restarts = 0
        self.started_at = time.monotonic()
        self.stats: dict[str, Any] = {}
        self.utilization = Utilization()
        self.worker: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._transport: Transport | None = None
        self._lock = threading.Lock()
        self._changed = False

    # -- control -------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        if not self._stop.is_set():
            log.info("stopping service %s: %s", self.settings.service, why)
        self._stop.set()
        self._wake.set()

    def run(self) -> int:
        """Supervise until stopped; the exit status for the command line."""
        self._transport = create_transport(self.settings.transport)
        self._transport.connect()
        try:
            self._transport.subscribe_broadcast(COMMAND_TOPIC, self._on_command)
            return self._supervise()
        finally:
            self._set_status(Status.TEARDOWN)
            self._broadcast_status()
            with contextlib.suppress(ZocaloError):
                self._transport.close()

    def _supervise(self) -> int:
        quick_crashes = 0
        while not self._stop.is_set():
            began = time.monotonic()
            code = self._run_worker()
            if self._stop.is_set() or code == 0:
                return 0 if self._stop.is_set() else code
            if code == CANNOT_LOAD:
                log.error(
                    "service %s cannot be loaded (see above); not restarting it",
                    self.settings.service,
                )
                return code
            ran_for = time.monotonic() - began
            quick_crashes = quick_crashes + 1 if ran_for < HEALTHY_RUN else 1
            self._set_status(Status.ERROR)
            if not self.settings.restart:
                log.error("service %s exited with status %s", self.settings.service, code)
                return code or 1
            delay = backoff(quick_crashes)
            level = logging.ERROR if quick_crashes >= CRASH_LOOP else logging.WARNING
            log.log(
                level,
                "service %s exited with status %s after %.1f s (%d quick crash(es)%s); "
                "restarting in %.1f s",
                self.settings.service,
                code,
                ran_for,
                quick_crashes,
                ", crash-looping" if quick_crashes >= CRASH_LOOP else "",
                delay,
            )
            self.restarts += 1
            self._broadcast_status()
            if self._stop.wait(delay):
                break
        return 0

    def _run_worker(self) -> int:
        """Start one worker, relay its reports, and wait for it to end."""
        report_read, report_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "zocalo.service.worker",
            "--service",
            self.settings.service,
            "--report-fd",
            str(report_write),
            "--log-format",
            self.settings.log_format,
            "--stop-grace",
            str(self.settings.stop_timeout),
            *(["--verbose"] if self.settings.verbose else []),
            *self.settings.worker_arguments,
        ]
        # The broker URL (and its password) goes in the environment, not on a command
        # line every user can read with ps.
        environment = {**os.environ, ENVIRONMENT_VARIABLE: self.settings.transport}
        self.worker = subprocess.Popen(
            command, stdin=subprocess.PIPE, pass_fds=(report_write,), env=environment
        )
        os.close(report_write)
        reader = threading.Thread(target=self._read_reports, args=(report_read,), daemon=True)
        reader.start()
        next_status = 0.0
        stop_sent_at: float | None = None
        while (code := self.worker.poll()) is None:
            now = time.monotonic()
            if self._stop.is_set() and stop_sent_at is None:
                self._tell_worker_to_stop()
                stop_sent_at = now
            if stop_sent_at is not None and now - stop_sent_at > self.settings.stop_timeout:
                log.error(
                    "service %s did not stop within %.0f s; killing it",
                    self.settings.service,
                    self.settings.stop_timeout,
                )
                self.worker.kill()
            if now >= next_status or self._changed:
                self._changed = False
                self._broadcast_status()
                next_status = now + self.settings.status_interval
            self._wake.wait(min(0.5, max(0.0, next_status - now)))
            self._wake.clear()
        reader.join(5)
        return code

    def _tell_worker_to_stop(self) -> None:
        assert self.worker is not None and self.worker.stdin is not None
        try:
            self.worker.stdin.write(b'{"command": "stop"}\n')
            self.worker.stdin.flush()
        except (BrokenPipeError, OSError):
            with contextlib.suppress(ProcessLookupError):
                self.worker.send_signal(signal.SIGTERM)

    def _read_reports(self, fd: int) -> None:
        with os.fdopen(fd, "r") as reports:
            for line in reports:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                self.stats = report.get("stats", self.stats)
                self.service_name = report.get("service", self.service_name)
                self.service_class = report.get("serviceclass", self.service_class)
                status = Status(report.get("status", int(self.status)))
                if status != self.status:
                    self._set_status(status)
                    self._changed = True
                    self._wake.set()

    # -- status and commands -------------------------------------------------
    def _set_status(self, status: Status) -> None:
        with self._lock:
            self.status = status
            self.utilization.record(status)

    def status_report(self) -> dict[str, Any]:
        with self._lock:
            return status_message(
                host=self.host,
                status=self.status,
                service=self.service_name,
                service_class=self.service_class,
                utilization=self.utilization.report(),
                extra={
                    "uptime": round(time.monotonic() - self.started_at, 1),
                    "restarts": self.restarts,
                    "messages": int(self.stats.get("handled", 0)),
                    "failed": int(self.stats.get("failed", 0)),
                    "dead_lettered": int(self.stats.get("dead_lettered", 0)),
                    "pid": os.getpid(),
                    "worker_pid": self.worker.pid if self.worker else None,
                },
            )

    def _broadcast_status(self) -> None:
        if self._transport is None or not self._transport.connected:
            return
        try:
            self._transport.broadcast(
                STATUS_TOPIC,
                json.dumps(self.status_report()),
                expiration=STATUS_EXPIRATION,
                timeout=10,
            )
        except ZocaloError as error:
            log.warning("could not broadcast status: %s", error)

    def _on_command(self, delivery: Delivery) -> None:
        try:
            command = json.loads(delivery.body)
        except ValueError:
            return
        if command_matches(command, self.host, self.service_class):
            if command.get("command") == "shutdown":
                self.request_stop(f"shutdown command {command}")
            else:
                log.info("ignoring command %s", command)


def supervise(settings: SupervisorSettings) -> int:
    """Run a supervisor in this (main) thread; SIGTERM/SIGINT stop it cleanly."""
    supervisor = Supervisor(settings)

    def on_signal(signum: int, frame: Any) -> None:
        supervisor.request_stop(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return supervisor.run()
