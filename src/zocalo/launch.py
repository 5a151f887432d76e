"""Launch several services at once on this machine: as operator-style processes, or as threads.

The demo and the tests use this; an operator would run the same
``zocalo.service -s NAME --transport URL`` commands in separate terminals.
(Not to be confused with :class:`zocalo.monitor.aggregate.FleetStatus`, the
monitor's view of whatever services are running, wherever they run.)
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from zocalo.errors import ZocaloError
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.service.runner import STARTED_MARK, STOPPED_MARK
from zocalo.transport.registry import create_transport

log = logging.getLogger(__name__)


class ServiceStartFailed(ZocaloError, RuntimeError):
    """A service launched here did not come up (its error, or its last output lines, say why)."""


def service_command(name: str, url: str) -> list[str]:
    """The operator's command line for service ``name`` on ``url``."""
    script = Path(sys.executable).with_name("zocalo.service")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "zocalo.cli.service"]
    return [*program, "-s", name, "--transport", url]


class ServiceProcesses:
    """Services in child processes, each in its own process group."""

    def __init__(
        self,
        names: Sequence[str],
        url: str,
        log: IO[str] | None = None,
        *,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.names = list(names)
        self.url = url
        self.log = log
        #: More ``zocalo.service`` options for every service (e.g. ``--config PATH``).
        self.options = list(options)
        #: The services' environment (None: this process's).
        self.env = dict(env) if env is not None else None
        self.processes: list[subprocess.Popen[str]] = []
        #: Each service's final counters, from its last log line (added up over the
        #: processes of a service started more than once).
        self.stats: dict[str, dict[str, float]] = {}
        self._stats_lock = threading.Lock()
        self._forwarders: list[threading.Thread] = []

    def __enter__(self) -> ServiceProcesses:
        try:
            for name in self.names:
                self.processes.append(
                    subprocess.Popen(
                        [*service_command(name, self.url), *self.options],
                        env=self.env,
                        stderr=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        text=True,
                        start_new_session=True,
                    )
                )
            for name, process in zip(self.names, self.processes, strict=True):
                self._wait_started(name, process)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_started(self, name: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
        """Read the service's log until it says it has subscribed; then keep forwarding it."""
        assert process.stderr is not None
        seen: list[str] = []
        found = threading.Event()

        def forward() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                seen.append(line)
                if STARTED_MARK in line:
                    found.set()
                if STOPPED_MARK in line:
                    with contextlib.suppress(ValueError), self._stats_lock:
                        counters = json.loads(line.split(STOPPED_MARK, 1)[1])
                        add_counters(self.stats, name, counters)
                if self.log is not None:
                    self.log.write(line)
            found.set()

        forwarder = threading.Thread(target=forward, daemon=True)
        forwarder.start()
        self._forwarders.append(forwarder)
        if not found.wait(timeout) or process.poll() is not None:
            raise ServiceStartFailed(f"service {name} did not start:\n{''.join(seen[-20:])}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM every process group (as systemd would), SIGKILL stragglers."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for forwarder in self._forwarders:
            forwarder.join(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_counters(
    stats: dict[str, dict[str, float]], name: str, counters: Mapping[str, float]
) -> None:
    """Add one process's (or thread's) final counters to those of service ``name``."""
    total = stats.setdefault(name, {})
    for counter, value in counters.items():
        total[counter] = total.get(counter, 0) + value


class ServiceThreads:
    """Services on threads of this process (for the in-memory broker), one runner each."""

    #: How long one service may take to connect, initialise and subscribe.
    START_TIMEOUT = 10.0

    def __init__(
        self, services: Sequence[Service], url: str, settings: RunnerSettings | None = None
    ) -> None:
        self.runners = [
            ServiceRunner(service, create_transport(url), settings) for service in services
        ]
        #: What ended a runner's thread with an error, by runner (read by ``__enter__``).
        self.errors: dict[ServiceRunner, BaseException] = {}
        self.threads = [
            threading.Thread(
                target=self._run, args=(r,), name=f"service-{r.service.name}", daemon=True
            )
            for r in self.runners
        ]

    def _run(self, runner: ServiceRunner) -> None:
        try:
            runner.run()
        except BaseException as error:
            self.errors[runner] = error  # for __enter__
            log.error("service %s stopped: %s", runner.service.name, error)

    def __enter__(self) -> ServiceThreads:
        """Start every service in turn; if one cannot start, stop those already started
        (no thread outlives a failed start) and raise naming the service and why."""
        try:
            for thread, runner in zip(self.threads, self.runners, strict=True):
                thread.start()
                self._wait_started(thread, runner)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_started(self, thread: threading.Thread, runner: ServiceRunner) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        while not runner.started.wait(0.05):
            if not thread.is_alive():
                cause = self.errors.get(runner)
                raise ServiceStartFailed(
                    f"service {runner.service.name} did not start: {cause or 'it stopped'}"
                )
            if time.monotonic() > deadline:
                raise ServiceStartFailed(
                    f"service {runner.service.name} did not start within {self.START_TIMEOUT:g} s"
                )

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        """Each service's counters (added up over its runners)."""
        totals: dict[str, dict[str, float]] = {}
        for runner in self.runners:
            add_counters(totals, runner.service.name, runner.stats.snapshot())
        return totals

    def stop(self) -> None:
        for runner in self.runners:
            runner.request_stop()
        for thread in self.threads:
            if thread.ident is not None:  # started (a failed start leaves the rest unstarted)
                thread.join(20)

    def __exit__(self, *exc: object) -> None:
        self.stop()
