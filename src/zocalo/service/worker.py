"""The worker process the supervisor starts: runs one service, reports, obeys.

Started as ``python -m zocalo.service.worker`` (a fresh interpreter, never a
fork of a process holding broker threads). Its stdin is a pipe from the
supervisor: a ``{"command": "stop"}`` line asks it to stop, and end-of-file
means the supervisor died (kill -9, the OOM killer) -- the worker then stops
too, so its prefetched messages go back to the queue instead of being held
by an orphan. Reports (status, counters) go to the supervisor as JSON lines
on the file descriptor given by ``--report-fd``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import IO, Any

from zocalo.config import load_configuration
from zocalo.logs import setup_logging
from zocalo.service.discovery import ServiceNotFound, load_service
from zocalo.service.runner import RunnerSettings, ServiceRunner
from zocalo.service.status import CANNOT_LOAD, Status
from zocalo.transport.registry import create_transport

log = logging.getLogger("zocalo.service.worker")

REPORT_INTERVAL = 0.5

POLL_INTERVAL = 0.1
#: After being told to stop, give up on a stuck handler this much later.
STOP_GRACE = 30.0


class Reporter:
    """Writes the worker's state to the supervisor when it changes, and periodically."""

    def __init__(self, runner: ServiceRunner, stream: IO[str]) -> None:
        self.runner = runner
        self.stream = stream
        self.status = Status.STARTING
        self._lock = threading.Lock()
        self._done = threading.Event()

    def send(self, status: Status | None = None, **extra: Any) -> None:
        with self._lock:
            if status is not None:
                self.status = status
            report = {
                "status": int(self.status),
                "stats": self.runner.stats.snapshot(),
                "pid": os.getpid(),
                **extra,
            }
            try:
                self.stream.write(json.dumps(report) + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the supervisor is gone; the stdin watcher handles that

    def run(self) -> None:
        last_sent = time.monotonic()
        while not self._done.wait(POLL_INTERVAL):
            now = time.monotonic()
            current = self.status
            if current is Status.STARTING and self.runner.started.is_set():
                current = Status.IDLE
            if current in (Status.IDLE, Status.PROCESSING):
                current = Status.PROCESSING if self.runner.processing else Status.IDLE
            if current != self.status or now - last_sent >= REPORT_INTERVAL:
                self.send(current)
                last_sent = now

    def stop(self) -> None:
        self._done.set()


def watch_supervisor(runner: ServiceRunner, commands: IO[str], grace: float) -> None:
    """Stop when the supervisor says so, or when its end of the pipe closes."""
    for line in commands:
        try:
            command = json.loads(line).get("command")
        except (ValueError, AttributeError):
            log.warning("ignoring unreadable command from the supervisor: %r", line)
            continue
        if command == "stop":
            log.info("supervisor asked this service to stop")
            runner.request_stop()
    log.warning("supervisor went away; stopping so prefetched messages return to the queue")
    runner.request_stop()
    _exit_if_stuck(grace)


def _exit_if_stuck(grace: float) -> None:
    """A handler that never returns must not keep an orphan alive forever."""
    timer = threading.Timer(grace, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zocalo.service.worker")
    parser.add_argument("--service", required=True)
    parser.add_argument("--transport", default=None, help="default: $ZOCALO_TRANSPORT")
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--stop-grace", type=float, default=STOP_GRACE)
    parser.add_argument("--max-attempts", type=int, default=RunnerSettings.max_attempts)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--config", default=None, help="site configuration file")
    parser.add_argument("-e", "--environment", action="append", default=[])
    args = parser.parse_args(argv)

    site_config = load_configuration(args.config, environments=args.environment)
    setup_logging(
        logging.DEBUG if args.verbose else logging.INFO,
        args.log_format,
        site_config,
        service_name=args.service,
        verbosity=int(args.verbose),
    )
    reports = os.fdopen(args.report_fd, "w", buffering=1)
    try:
        service_class = load_service(args.service)
    except ServiceNotFound as error:
        log.error("%s", error)
        return CANNOT_LOAD
    runner = ServiceRunner(
        service_class(),
        create_transport(args.transport),
        RunnerSettings(max_attempts=args.max_attempts),
    )
    if args.metrics_port is not None:  # Prometheus metrics, served from this process
        from zocalo.monitor.metrics import enable_metrics

        enable_metrics(runner, args.metrics_port)
    reporter = Reporter(runner, reports)
    reporter.send(Status.STARTING, service=service_class.name, serviceclass=service_class.__name__)

    def stop(signum: int, frame: Any) -> None:
        runner.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    threading.Thread(
        target=watch_supervisor, args=(runner, sys.stdin, args.stop_grace), daemon=True
    ).start()
    threading.Thread(target=reporter.run, daemon=True).start()
    try:
        runner.run()
    except Exception:
        log.exception("service %s failed", service_class.name)
        reporter.stop()
        reporter.send(Status.ERROR)
        return 1
    reporter.stop()
    reporter.send(Status.END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
