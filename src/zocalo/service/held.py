"""Inputs held back before they return to their queue.

When the broker refuses a message's outputs (a full queue, a queue that does
not exist, a delay it cannot carry), returning the input at once hands it
straight back to a consumer, which fails the same way: a hot loop on a queue
without a delivery limit. The runner holds such an input unacknowledged for a
growing pause instead; the prefetch window bounds how many it holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class HeldReturns:
    """Calls each ``give_back`` after its pause, on a timer thread; ``flush`` calls the rest now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: dict[threading.Timer, Callable[[], None]] = {}
        self._flushed = False
        # Refusals in a row: the pause doubles with each, and resets on a success.
        # Counted from the runner thread and the transport's confirm threads alike.
        self._in_a_row = 0

    def refused(self) -> int:
        """Count one more refusal in a row; how many there are now."""
        with self._lock:
            self._in_a_row += 1
            return self._in_a_row

    def accepted(self) -> None:
        """A publish went through: the next refusal starts the pauses over."""
        with self._lock:
            self._in_a_row = 0

    def hold(self, pause: float, give_back: Callable[[], None]) -> None:
        """Call ``give_back`` after ``pause`` seconds; at once after :meth:`flush`."""
        timer: threading.Timer

        def fire() -> None:
            with self._lock:
                if self._timers.pop(timer, None) is None:
                    return  # flushed meanwhile
            give_back()

        timer = threading.Timer(pause, fire)
        timer.daemon = True
        with self._lock:
            flushed = self._flushed
            if not flushed:
                self._timers[timer] = give_back
        if flushed:
            give_back()  # a refusal confirmed while the service stops: no timer outlives it
            return
        timer.start()

    def flush(self) -> None:
        """Give everything back now (the service is stopping)."""
        with self._lock:
            held, self._timers = self._timers, {}
            self._flushed = True
        for timer, give_back in held.items():
            timer.cancel()
            give_back()

    def __len__(self) -> int:
        with self._lock:
            return len(self._timers)
