"""Cancelling a recipe: one broadcast that each service and wrapper working for it hears.

``zocalo cancel RECIPE_ID`` broadcasts ``{"cancel": RECIPE_ID, "at": <epoch seconds>}``
on the ``zocalo.cancel`` topic (python-zocalo has no cancellation; this is ours).
Every service then acks and drops the recipe's messages still in its queues
(:mod:`zocalo.service.middleware.cancellation`), the cluster submission service
cancels the recipe's Slurm jobs, and a running wrapper of the recipe stops its
program.

Queued work may wait for days (a queue whose service is down over a weekend),
so a cancellation holds for :data:`CANCEL_WINDOW`, and the broker keeps the
broadcasts that long (``Transport.keep_broadcasts``): a service that starts,
or restarts, within it still hears the cancellations made before, by replaying
the topic. Broadcasts are kept from the first ``zocalo cancel`` or service that
asks the broker to keep them. :class:`CancellationListener` is how services
(:mod:`zocalo.service.middleware.cancellation`) and wrappers (``zocalo.wrap``) hear
them: the kept ones first, then each as it is made.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from zocalo.errors import UnsupportedFeature, ZocaloError

if TYPE_CHECKING:
    from zocalo.transport.base import Delivery, Subscription, Transport

CANCEL_TOPIC = "zocalo.cancel"
#: Seconds a cancellation holds (and the broker keeps it): a week covers queued work.
CANCEL_WINDOW = 7 * 86400.0
#: The key of the marker a listener broadcasts to know that its replay is through.
REPLAYED_KEY = "replayed"
#: Seconds a listener waits for its replay before it goes on anyway.
REPLAY_TIMEOUT = 30.0


class Cancellation(NamedTuple):
    """A recipe's cancellation, and when it was made (epoch seconds)."""

    recipe_id: str
    at: float


def cancel_message(recipe_id: str, at: float | None = None) -> str:
    return json.dumps({"cancel": recipe_id, "at": time.time() if at is None else at})


def read_cancellation(body: bytes | str, heard_at: float | None = None) -> Cancellation | None:
    """The cancellation ``body`` makes; None for anything else (never an error).

    One without a time (an older ``zocalo cancel``, or written by hand) counts from
    when it was heard, ``heard_at`` (now by default).
    """
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    recipe_id, at = message.get("cancel"), message.get("at")
    if not isinstance(recipe_id, str) or not recipe_id:
        return None
    heard_at = time.time() if heard_at is None else heard_at
    return Cancellation(recipe_id, _seconds(at, heard_at))


def _seconds(at: object, heard_at: float) -> float:
    """``at`` as epoch seconds; ``heard_at`` for none, nonsense, or a time to come (a
    skewed clock must not stretch the window)."""
    if not isinstance(at, int | float) or isinstance(at, bool):
        return heard_at
    try:
        seconds = float(at)
    except OverflowError:
        return heard_at
    return seconds if seconds <= heard_at else heard_at  # (NaN compares False)


def cancelled_recipe(body: bytes | str) -> str | None:
    """The recipe ID a cancellation names; None for anything else (never an error)."""
    cancellation = read_cancellation(body)
    return cancellation.recipe_id if cancellation is not None else None


def keep_cancellations(transport: Transport) -> bool:
    """Ask the broker to keep cancellations for :data:`CANCEL_WINDOW`; False if it cannot."""
    try:
        transport.keep_broadcasts(CANCEL_TOPIC, seconds=CANCEL_WINDOW)
    except UnsupportedFeature:
        return False
    return True


def broadcast_cancel(transport: Transport, recipe_id: str) -> str:
    """Broadcast the cancellation of ``recipe_id`` on a connected ``transport``, kept by
    the broker for :data:`CANCEL_WINDOW` where it can; the body."""
    keep_cancellations(transport)
    body = cancel_message(recipe_id)
    transport.broadcast(CANCEL_TOPIC, body)
    return body


class Replay(NamedTuple):
    """How :meth:`CancellationListener.listen` went: whether the broker ``keeps``
    cancellations for listeners that start later, whether the kept ones all arrived
    (``complete``), and the broker's complaint if there was one."""

    keeps: bool
    complete: bool
    error: ZocaloError | None = None


class CancellationListener:
    """Hears cancellations on a connected transport, those the broker kept first.

    ``on_cancel`` is called (on the transport's thread) with each cancellation made
    within ``window`` seconds, kept or new, repeats included. :meth:`listen` returns
    once the kept ones are through: it broadcasts a marker of its own after
    subscribing and waits for it to come back after them. The marker expires, so no
    later replay reads it (RabbitMQ's stream still holds it for the window, and each
    listener reads it past).
    """

    def __init__(
        self,
        transport: Transport,
        on_cancel: Callable[[Cancellation], None],
        *,
        window: float = CANCEL_WINDOW,
        replay_timeout: float = REPLAY_TIMEOUT,
    ) -> None:
        self.transport = transport
        self.on_cancel = on_cancel
        self.window = window
        self.replay_timeout = replay_timeout
        #: Set once the kept cancellations are through (or will not come).
        self.replayed = threading.Event()
        self.subscription: Subscription | None = None
        self._marker = uuid.uuid4().hex

    def listen(self) -> Replay:
        """Subscribe, and wait for the kept cancellations. A broker that keeps none (or
        refuses the replay) gets a live subscription; one that refuses even that raises."""
        try:
            self.subscription = self.transport.subscribe_broadcast(
                CANCEL_TOPIC, self._hear, replay=self.window
            )
        except ZocaloError as error:
            self.replayed.set()  # nothing to replay: each one heard from now on is news
            self.subscription = self.transport.subscribe_broadcast(CANCEL_TOPIC, self._hear)
            return Replay(keeps=False, complete=False, error=error)
        marker = json.dumps({REPLAYED_KEY: self._marker})
        try:
            self.transport.broadcast(CANCEL_TOPIC, marker, expiration=self.replay_timeout)
        except ZocaloError as error:
            self.replayed.set()
            return Replay(keeps=True, complete=False, error=error)
        complete = self.replayed.wait(self.replay_timeout)
        self.replayed.set()
        return Replay(keeps=True, complete=complete)

    def _hear(self, delivery: Delivery) -> None:
        cancellation = read_cancellation(delivery.body)
        if cancellation is not None:
            if time.time() - cancellation.at < self.window:
                self.on_cancel(cancellation)
            return
        with contextlib.suppress(ValueError):
            message = json.loads(delivery.body)
            if isinstance(message, dict) and message.get(REPLAYED_KEY) == self._marker:
                self.replayed.set()

    def stop(self) -> None:
        """Stop listening (a connection that is closing anyway may refuse: no matter)."""
        subscription, self.subscription = self.subscription, None
        if subscription is not None and subscription.active:
            with contextlib.suppress(ZocaloError):
                self.transport.unsubscribe(subscription)
