"""Runner middleware: the behaviour around the runner's core, one concern per module.

The runner itself only decodes a delivery, calls its handler and settles it
(outputs and ack in one publish). Everything else hangs on its hook points
(see :class:`Middleware`):

- :mod:`.log_context`: the recipe ID on every log line of a message;
- :mod:`.cancellation`: the messages of a cancelled recipe (``zocalo cancel``)
  acked and dropped, one line each;
- :mod:`.retries`: a failing handler's message again later, with backoff;
- :mod:`.dead_letter`: what cannot be handled to ``dlq.<queue>``;
- :mod:`.time_limit`: tells the supervisor of handlers with a time limit;
- :mod:`.memory_limit`: a worker past ``--max-memory`` hands over to a fresh one.

Prometheus metrics hook in the same way from ``zocalo.monitor.metrics``.
:func:`default_middleware` is what a runner gets unless told otherwise; a
facility adds its own with ``ServiceRunner(..., middleware=[*default_middleware(),
Mine()])`` or ``runner.add_middleware(Mine())``.
"""

from __future__ import annotations

from zocalo.service.middleware.base import (
    CANCELLED,
    DEAD_LETTERED,
    FAILED,
    HANDLED,
    KEPT,
    OUTCOMES,
    RETRIED,
    RETURNED,
    InHand,
    Middleware,
    Runner,
)
from zocalo.service.middleware.cancellation import DropCancelled
from zocalo.service.middleware.dead_letter import DeadLetter
from zocalo.service.middleware.log_context import LogContext
from zocalo.service.middleware.retries import Retries

__all__ = [
    "CANCELLED",
    "DEAD_LETTERED",
    "FAILED",
    "HANDLED",
    "KEPT",
    "OUTCOMES",
    "RETRIED",
    "RETURNED",
    "DeadLetter",
    "DropCancelled",
    "InHand",
    "LogContext",
    "Middleware",
    "Retries",
    "Runner",
    "default_middleware",
]


def default_middleware() -> list[Middleware]:
    """What every runner does unless told otherwise, outermost first: the log context
    around everything, dropping what a cancelled recipe left in the queues, then
    retries, then dead-lettering what retries pass on."""
    return [LogContext(), DropCancelled(), Retries(), DeadLetter()]
