"""Settling messages: a handler's outputs and the ack of its input, in one publish.

The runner does not wait for the broker's confirmation of a publish but goes
on to the next message, so confirms are pipelined up to the subscription's
prefetch; the unconfirmed ones are waited for once, at shutdown. Outputs the
broker refuses leave the input unacked: it is held back for a pause that
doubles while the refusals go on (see :mod:`zocalo.service.held`), then
returned to its queue, and the broker's own delivery limit stays the safety net.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

from zocalo.errors import PublishFailed, ZocaloError
from zocalo.service.held import HeldReturns
from zocalo.service.runner_settings import RunnerSettings, RunnerStats
from zocalo.transport.base import Delivery, Outgoing, Transport

log = logging.getLogger("zocalo.service.runner")

#: The longest pause before an input whose outputs were refused returns to its queue.
MAX_HOLD_SECONDS = 30.0


class Settlement:
    """Publishes outputs acking their input, tracks the confirms, holds back refusals."""

    def __init__(self, transport: Transport, settings: RunnerSettings, stats: RunnerStats) -> None:
        self.transport = transport
        self.settings = settings
        self.stats = stats
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        self._all_settled = threading.Condition(self._pending_lock)
        self._held = HeldReturns()

    def settle(self, delivery: Delivery | Sequence[Delivery], outputs: Sequence[Outgoing]) -> None:
        """Publish ``outputs`` and ack ``delivery`` (one, or several together: kept
        messages settled as a group) as one publish, without waiting."""
        ack: Delivery | list[Delivery] | None
        if isinstance(delivery, Delivery):  # every message's path: acked as itself, no list
            inputs = [delivery]
            ack = delivery if delivery.ackable else None
        else:
            inputs = list(delivery)
            ack = [each for each in inputs if each.ackable] or None
        if ack is None and not outputs:
            return
        try:
            confirmation = self.transport.publish(outputs, ack=ack)
        except ZocaloError as error:
            self._refused(inputs, error)
            return
        with self._pending_lock:
            self._pending.add(confirmation)
        confirmation.add_done_callback(lambda done: self._confirmed(done, inputs))

    def give_back(self, delivery: Delivery, reason: str) -> None:
        """Return ``delivery`` to its queue now; a transport that cannot is logged."""
        try:
            self.transport.nack(delivery, requeue=True, reason=reason)
        except ZocaloError as error:
            log.warning("nack failed: %s", error)

    def finish(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the unconfirmed publishes, then return every held
        input now; False when some stayed unconfirmed (their inputs return unacked)."""
        confirmed = self._wait_for_confirms(timeout)
        self._held.flush()
        return confirmed

    def _wait_for_confirms(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._all_settled:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.error(
                        "%d publishes still unconfirmed at shutdown; their inputs "
                        "stay unacked and return to the queue",
                        len(self._pending),
                    )
                    return False
                self._all_settled.wait(remaining)
        return True

    def _confirmed(self, done: Future, inputs: list[Delivery]) -> None:
        """The broker answered (on a transport's thread, whose executor would swallow
        anything raised here): an input not acked is always held or given back."""
        with self._all_settled:
            self._pending.discard(done)
            self._all_settled.notify_all()
        if done.cancelled():
            self._refused(inputs, PublishFailed("the publish was cancelled"))
            return
        error = done.exception()
        if error is not None:
            self._refused(inputs, error)
        else:
            self._held.accepted()

    def _refused(self, inputs: list[Delivery], error: BaseException) -> None:
        """Return the inputs unacknowledged, after a pause that grows while refusals go on;
        at once if even that goes wrong, so that none is stranded."""
        self.stats.add("publish_failed")
        for delivery in inputs:
            self._return_later(delivery, error)

    def _return_later(self, delivery: Delivery, error: BaseException) -> None:
        try:
            self._hold_back(delivery, error)
        except Exception as bug:
            log.error(
                "could not hold back %s (%s: %s); it returns to its queue now",
                delivery.describe(),
                type(bug).__name__,
                bug,
            )
            if delivery.ackable:
                self.give_back(delivery, f"outputs not accepted: {error}")

    def _hold_back(self, delivery: Delivery, error: BaseException) -> None:
        pause = min(self.settings.delay_before(self._held.refused()), MAX_HOLD_SECONDS)
        log.error(
            "outputs of %s were not accepted, so it is not acknowledged and returns "
            "to its queue in %.1f s: %s",
            delivery.describe(),
            pause,
            error,
        )
        if delivery.ackable:
            reason = f"outputs not accepted: {error}"
            self._held.hold(pause, lambda: self.give_back(delivery, reason))
