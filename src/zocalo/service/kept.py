"""Kept messages: a handler keeps its message and settles it later, with others (batching).

A handler that acts on messages together (JSONLines writes a batch of lines
in one write) calls :meth:`Service.keep_message <zocalo.service.Service.keep_message>`: when
it returns, the runner neither acks nor fails that message. The service
settles it later, alone or in a group, through the runner (the one home of
every settlement):

- ``settle_kept``: the group's outputs published and all of them acked, in
  one atomic publish (as one message's outputs and ack are);
- ``fail_kept``: each goes through the failure path as if its handler had
  raised the error (retried later with the reason, dead-lettered after its
  last attempt), with one log line for the group;
- ``give_back_kept``: each returned to its queue now, unhandled.

Until then a kept message stays unacknowledged, so it counts against its
subscription's prefetch: a service that waits for ``n`` messages needs
``prefetch >= n``. The runner calls :meth:`Service.flush_kept
<zocalo.service.Service.flush_kept>` once ``flush_idle`` seconds pass without a new
message while any are kept (from :class:`IdleTimer`'s thread, holding the
lock that every message is handled under, so it never runs beside a
handler), and once more at stop; whatever is still kept after that returns
to its queue. Nothing kept is ever acked unsettled or lost: a crash leaves
it unacknowledged, and the broker delivers it again (so what a service did
with a group before it crashed, and before the settle, is done again).

Keep and settle from a handler or from ``flush_kept`` (both run under the
runner's lock), never from threads of the service's own.

The hooks see a kept message as still in flight: ``on_kept`` when its
handler returns, ``after_message`` once it is settled (with the seconds since
the runner took it in hand).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from zocalo.recipe.step import RecipeStep
    from zocalo.transport.base import Delivery


class Kept:
    """A message its handler kept: settle it with the ``*_kept`` methods of :class:`Settler`.

    Settling it again does nothing (the first settlement stands).
    """

    __slots__ = ("delivery", "in_process", "outcome", "settled", "step")

    def __init__(self, delivery: Delivery, step: RecipeStep) -> None:
        self.delivery = delivery
        #: The step its handler was given: its outputs go out when it is settled.
        self.step = step
        #: True until the runner's processing of it returns (its handler is running).
        self.in_process = True
        self.settled = False
        #: How it was settled while still in process (for ``after_message`` then).
        self.outcome: str | None = None

    def describe(self) -> str:
        return self.delivery.describe()


class Settler(Protocol):
    """What keeps and settles messages: the runner (a service reaches it through its
    own methods of the same names)."""

    def keep_message(self) -> Kept:
        """Keep the message in hand, to settle later with the ``*_kept`` methods."""

    def settle_kept(self, kept: Iterable[Kept]) -> None:
        """Publish the outputs of ``kept`` and ack them all, in one publish."""

    def fail_kept(self, kept: Iterable[Kept], error: Exception) -> None:
        """Each of ``kept`` fails with ``error``, as if its handler had raised it."""

    def give_back_kept(self, kept: Iterable[Kept], reason: str) -> None:
        """Return each of ``kept`` to its queue now, unhandled."""


class IdleTimer:
    """Calls ``action`` on a thread of its own once ``arm``'s seconds pass without
    another ``arm``; ``disarm`` cancels it. The thread starts on the first ``arm``."""

    def __init__(self, action: Callable[[], None], name: str) -> None:
        self._action = action
        self._name = name
        self._condition = threading.Condition()
        self._due: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        with self._condition:
            if self._closed:
                return
            self._due = time.monotonic() + seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._condition.notify()

    def disarm(self) -> None:
        with self._condition:
            self._due = None

    def close(self) -> None:
        """Stop the thread (waiting for an action under way); later ``arm`` calls do nothing."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        with self._condition:
            while not self._closed:
                if self._due is None:
                    self._condition.wait()
                    continue
                remaining = self._due - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                self._due = None
                self._condition.release()
                try:
                    self._action()
                finally:
                    self._condition.acquire()
