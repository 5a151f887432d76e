"""What a runner is told (:class:`RunnerSettings`) and what it counts (:class:`RunnerStats`).

A module of its own so that the runner and its middleware both import it and
not each other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zocalo.service.base import HandlerSpec

#: Growth stops after this many doublings: far past any useful delay (2**32 s is
#: over a century), and the power stays a float long after a run of refusals
#: (``2.0 ** 1025`` overflows).
MAX_BACKOFF_STEPS = 32


@dataclass
class RunnerSettings:
    """Retry policy and shutdown limits.

    ``max_attempts`` must stay below the broker's delivery limit (5 on DLS
    RabbitMQ), which is kept for messages that crash the whole process.
    """

    max_attempts: int = 3
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    stop_timeout: float = 30.0
    #: Longest recipe-path a message may carry; beyond it, a runaway loop (dead-lettered).
    max_hops: int = 1000

    def delay_before(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): grows geometrically,
        for at most :data:`MAX_BACKOFF_STEPS` steps."""
        steps = min(max(attempt - 1, 0), MAX_BACKOFF_STEPS)
        return self.retry_delay * self.retry_backoff**steps

    def max_attempts_of(self, spec: HandlerSpec) -> int:
        """How many times a message of ``spec``'s handler may fail: its own limit, or ours."""
        return spec.max_attempts or self.max_attempts


@dataclass
class RunnerStats:
    """Counts of everything the runner did; every discard is counted."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    #: Messages of cancelled recipes, acked and dropped before their handler.
    cancelled: int = 0
    unrouted: int = 0
    publish_failed: int = 0
    #: Seconds spent inside process() (handler, decoding, settling).
    busy_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}
