"""Cancelled recipes: their messages still in the queues are acked and dropped, one line each.

``zocalo cancel RECIPE_ID`` broadcasts on ``zocalo.cancel`` (see
:mod:`zocalo.recipe.cancel`). Every runner listens there, on its own
transport, and remembers each cancelled recipe for ``CANCEL_WINDOW`` (a
week); a message of one is then acked without running its handler, logged
(``dropping <message>: recipe <ID> was cancelled``) and counted
(``cancelled``). The cost per message is one dictionary lookup.

A service that was not running when the cancellation was broadcast (stopped,
restarting, or started later) still hears it: the broker keeps the topic's
broadcasts for the window and the subscription replays them
(``subscribe_broadcast(..., replay=)``). Before its handlers subscribe, the
runner waits until the replay is through, by broadcasting a marker of its own
and waiting for it to come back after the kept ones, so the first messages of
a backlog are judged with every cancellation known (the marker expires, so no
later replay reads it; RabbitMQ's stream still holds it for the week, and each
start reads it past). On a transport that keeps no broadcasts (ActiveMQ), only
cancellations made while the service runs are heard (said in one line at start).

A handler registered with ``sees_cancelled=True`` gets a cancelled recipe's
messages anyway, with ``step.cancelled`` set, to clean up what the recipe
started elsewhere (the cluster submission service cancels its Slurm jobs).
"""

from __future__ import annotations

import logging
import time

from zocalo.errors import UnsupportedFeature, ZocaloError
from zocalo.recipe.cancel import (
    CANCEL_TOPIC,
    CANCEL_WINDOW,
    REPLAY_TIMEOUT,
    Cancellation,
    CancellationListener,
)
from zocalo.service.middleware.base import CANCELLED, InHand, Middleware, Runner

log = logging.getLogger("zocalo.service.middleware.cancellation")


class DropCancelled(Middleware):
    """Ack and drop the messages of recipes cancelled within ``window`` seconds."""

    def __init__(self, window: float = CANCEL_WINDOW, replay_timeout: float = REPLAY_TIMEOUT):
        self.window = window
        self.replay_timeout = replay_timeout
        #: Cancelled recipe ID -> when it was cancelled (epoch seconds). Written by the
        #: transport's callback thread, read by the handling thread: each is one atomic
        #: dict operation, and pruning replaces the dict whole.
        self.cancelled: dict[str, float] = {}
        self._listener: CancellationListener | None = None

    # -- hearing cancellations -----------------------------------------------
    def on_start(self, runner: Runner) -> None:
        """Listen for cancellations, and read those the broker kept, before the handlers
        subscribe. A broker that refuses (a user who may declare nothing, and no
        ``zocalo.kept.zocalo.cancel`` stream declared for it) costs the service its
        cancellations, said in one line, never its start."""
        name = runner.service.name
        self._listener = CancellationListener(
            runner.transport, self._hear, window=self.window, replay_timeout=self.replay_timeout
        )
        try:
            replay = self._listener.listen()
        except ZocaloError as error:
            log.error(
                "cannot hear cancellations on %s (%s): %s drops no cancelled recipe's messages",
                CANCEL_TOPIC,
                error,
                name,
            )
            return
        if not replay.keeps:
            # A broker that keeps nothing (ActiveMQ) says so at every start: that is how
            # it is. One that refuses (permissions) is worth a warning.
            log.log(
                logging.INFO if isinstance(replay.error, UnsupportedFeature) else logging.WARNING,
                "%s: cancellations made while %s is not running are not heard (%s)",
                CANCEL_TOPIC,
                name,
                replay.error,
            )
        elif replay.error is not None:
            log.warning(
                "%s starts without waiting for the kept cancellations: %s", name, replay.error
            )
        elif not replay.complete:
            log.warning(
                "the cancellations kept by the broker did not arrive within %g s; %s starts "
                "anyway, dropping the messages of those it hears from now on",
                self.replay_timeout,
                name,
            )
        elif self.cancelled:
            log.info(
                "%d recipe(s) cancelled in the last %s: their messages are dropped",
                len(self.cancelled),
                _duration(self.window),
            )

    def _hear(self, cancellation: Cancellation) -> None:
        now, recipe_id = time.time(), cancellation.recipe_id
        before = self.cancelled.get(recipe_id)
        if before is not None and before >= cancellation.at:
            return  # heard already (a replay after a reconnect)
        kept = {recipe: at for recipe, at in self.cancelled.items() if now - at < self.window}
        kept[recipe_id] = cancellation.at  # cancelled again: the window starts again
        self.cancelled = kept
        replayed = self._listener is not None and self._listener.replayed.is_set()
        if before is None and replayed:  # (the replay's: in one line)
            log.info("recipe %s was cancelled: its messages are dropped", recipe_id)

    def on_stop(self, runner: Runner) -> None:
        if self._listener is not None:
            self._listener.stop()

    # -- judging messages --------------------------------------------------------
    def before_handler(self, runner: Runner, message: InHand) -> str | None:
        step = message.step
        recipe_id = step.recipe_id if step is not None else None
        if recipe_id is None:
            return None
        at = self.cancelled.get(recipe_id)
        if at is None or time.time() - at >= self.window:
            return None
        assert step is not None
        if message.spec.sees_cancelled:
            step.cancelled = True
            return None
        delivery = message.delivery
        log.info("dropping %s: recipe %s was cancelled", delivery.describe(), recipe_id)
        runner.stats.add("cancelled")
        if delivery.ackable:
            runner.settle(delivery, [])
        return CANCELLED


def _duration(seconds: float) -> str:
    """``7 days``, ``3 hours``, ``90 s``: a window as an operator reads it."""
    for unit, length in (("days", 86400), ("hours", 3600)):
        if seconds >= length and seconds % length == 0:
            return f"{seconds / length:g} {unit}"
    return f"{seconds:g} s"
