"""Prometheus metrics for one service, served by its worker process.

The counters live where the messages are handled, in the worker: the command
line names :func:`enable_metrics` among the worker's runner hooks (the service
layer never imports this module), which adds :class:`ServiceMetrics` to the
runner as a middleware and serves them over HTTP on
``--metrics-port``, on the loopback address unless ``--metrics-address``
opens it wider (secure by default: counters and queue names are nobody
else's business). A restarted worker serves fresh counters on the same
port, which Prometheus reads as a counter reset, as it should.

- ``zocalo_messages_total{queue,outcome}``: messages finished, by outcome
  (handled, retried, dead_lettered, failed);
- ``zocalo_handler_seconds{queue}``: time per message (decode, handler, settle);
- ``zocalo_in_flight{queue}``: messages being processed right now.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from zocalo.service.middleware.base import OUTCOMES, InHand, Middleware, Runner

if TYPE_CHECKING:
    from zocalo.service.runner import ServiceRunner

log = logging.getLogger("zocalo.monitor.metrics")

#: Where the endpoint listens unless told otherwise: this machine only.
DEFAULT_ADDRESS = "127.0.0.1"


class ServiceMetrics(Middleware):
    """Counters, a latency histogram and an in-flight gauge on a private registry,
    kept by the runner's hooks."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.messages = Counter(
            "zocalo_messages",
            "Messages finished by the service, by queue and outcome.",
            ["queue", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zocalo_handler_seconds",
            "Seconds spent on one message: decoding, the handler and settling.",
            ["queue"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "zocalo_in_flight",
            "Messages being processed now.",
            ["queue"],
            registry=self.registry,
        )
        self.server: Any = None

    def declare(self, queue: str) -> None:
        """Make ``queue``'s series visible (at zero) before its first message."""
        for outcome in OUTCOMES:
            self.messages.labels(queue=queue, outcome=outcome)
        self.latency.labels(queue=queue)
        self.in_flight.labels(queue=queue)

    def started(self, queue: str) -> None:
        self.in_flight.labels(queue=queue).inc()

    def finished(self, queue: str, outcome: str, seconds: float) -> None:
        self.messages.labels(queue=queue, outcome=outcome).inc()
        self.latency.labels(queue=queue).observe(seconds)
        self.in_flight.labels(queue=queue).dec()

    # -- as a runner middleware ------------------------------------------------
    def on_start(self, runner: Runner) -> None:
        """Every queue's series at zero from the start (handlers added in
        ``initializing`` included)."""
        for spec in runner.service.handlers():
            self.declare(spec.destination)

    def before_message(self, runner: Runner, message: InHand) -> None:
        self.started(message.spec.destination)

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        self.finished(message.spec.destination, outcome, seconds)

    def attach(self, runner: ServiceRunner) -> None:
        """Count every message ``runner`` processes (before it runs)."""
        runner.add_middleware(self)

    def serve(self, port: int, address: str = DEFAULT_ADDRESS) -> None:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread."""
        self.server = start_http_server(port, addr=address, registry=self.registry)


def enable_metrics(
    runner: ServiceRunner, port: int, address: str = DEFAULT_ADDRESS
) -> ServiceMetrics | None:
    """Attach metrics to ``runner`` and serve them; a port in use is logged, not fatal.

    The service keeps working without its metrics rather than crash-looping
    over a port.
    """
    metrics = ServiceMetrics()
    metrics.attach(runner)
    try:
        metrics.serve(port, address)
    except OSError as error:
        log.error(
            "cannot serve metrics on %s port %d, running without them: %s", address, port, error
        )
        return None
    log.info("serving Prometheus metrics on %s port %d", address, port)
    return metrics
