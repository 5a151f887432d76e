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

import json
import logging
import threading
import time
import uuid

from zocalo.errors import UnsupportedFeature, ZocaloError
from zocalo.recipe.cancel import CANCEL_TOPIC, CANCEL_WINDOW, read_cancellation
from zocalo.service.middleware.base import CANCELLED, InHand, Middleware, Runner
from zocalo.transport.base import Delivery, Subscription, Transport

log = logging.getLogger("zocalo.service.middleware.cancellation")

#: The key of the marker a runner broadcasts to know that its replay is through.
REPLAYED_KEY = "replayed"
#: Seconds a runner waits for its replay before it starts anyway (with a warning).
REPLAY_TIMEOUT = 30.0


class DropCancelled(Middleware):
    """Ack and drop the messages of recipes cancelled within ``window`` seconds."""

    def __init__(self, window: float = CANCEL_WINDOW, replay_timeout: float = REPLAY_TIMEOUT):
        self.window = window
        self.replay_timeout = replay_timeout
        #: Cancelled recipe ID -> when it was cancelled (epoch seconds). Written by the
        #: transport's callback thread, read by the handling thread: each is one atomic
        #: dict operation, and pruning replaces the dict whole.
        self.cancelled: dict[str, float] = {}
        self._subscription: Subscription | None = None
        self._marker = ""
        self._replayed = threading.Event()

    # -- hearing cancellations -----------------------------------------------
    def on_start(self, runner: Runner) -> None:
        """Listen for cancellations, and read those the broker kept, before the handlers
        subscribe. A broker that refuses (a user who may declare nothing, and no
        ``zocalo.kept.zocalo.cancel`` stream declared for it) costs the service its
        cancellations, said in one line, never its start."""
        name = runner.service.name
        try:
            self._listen(runner.transport, name)
        except ZocaloError as error:
            self._replayed.set()
            log.error(
                "cannot hear cancellations on %s (%s): %s drops no cancelled recipe's messages",
                CANCEL_TOPIC,
                error,
                name,
            )

    def _listen(self, transport: Transport, name: str) -> None:
        self._marker = uuid.uuid4().hex
        try:
            self._subscription = transport.subscribe_broadcast(
                CANCEL_TOPIC, self._hear, replay=self.window
            )
        except ZocaloError as error:
            # A broker that keeps nothing (ActiveMQ) says so at every start: that is how
            # it is. One that refuses (permissions) is worth a warning.
            log.log(
                logging.INFO if isinstance(error, UnsupportedFeature) else logging.WARNING,
                "%s: cancellations made while %s is not running are not heard (%s)",
                CANCEL_TOPIC,
                name,
                error,
            )
            self._replayed.set()  # nothing to replay: each one heard from now on is news
            self._subscription = transport.subscribe_broadcast(CANCEL_TOPIC, self._hear)
            return
        # Kept like any broadcast of the topic, but expiring: no later replay reads it.
        marker = json.dumps({REPLAYED_KEY: self._marker})
        try:
            transport.broadcast(CANCEL_TOPIC, marker, expiration=self.replay_timeout)
        except ZocaloError as error:
            self._replayed.set()
            log.warning("%s starts without waiting for the kept cancellations: %s", name, error)
            return
        if self._replayed.wait(self.replay_timeout):
            if self.cancelled:
                log.info(
                    "%d recipe(s) cancelled in the last %s: their messages are dropped",
                    len(self.cancelled),
                    _duration(self.window),
                )
            return
        self._replayed.set()  # what comes from now on is logged as it comes
        log.warning(
            "the cancellations kept by the broker did not arrive within %g s; %s starts "
            "anyway, dropping the messages of those it hears from now on",
            self.replay_timeout,
            name,
        )

    def _hear(self, delivery: Delivery) -> None:
        cancellation = read_cancellation(delivery.body)
        if cancellation is None:
            self._check_marker(delivery.body)
            return
        now, recipe_id = time.time(), cancellation.recipe_id
        before = self.cancelled.get(recipe_id)
        if now - cancellation.at >= self.window or (
            before is not None and before >= cancellation.at
        ):
            return  # too old, or heard already (a replay after a reconnect)
        kept = {recipe: at for recipe, at in self.cancelled.items() if now - at < self.window}
        kept[recipe_id] = cancellation.at  # cancelled again: the window starts again
        self.cancelled = kept
        if before is None and self._replayed.is_set():  # (the replay's: in one line)
            log.info("recipe %s was cancelled: its messages are dropped", recipe_id)

    def _check_marker(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            return
        if isinstance(message, dict) and message.get(REPLAYED_KEY) == self._marker:
            self._replayed.set()

    def on_stop(self, runner: Runner) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None and subscription.active:
            try:
                runner.transport.unsubscribe(subscription)
            except ZocaloError as error:  # it ends with the connection anyway
                log.debug("could not unsubscribe from %s: %s", CANCEL_TOPIC, error)

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
