"""This connection's subscriptions as its worker sees them, and claiming their messages.

The worker thread claims deliveries and marks consumers woken; the caller's
threads take deliveries out of flight when they ack, nack or publish. Both go
through :class:`Consumers`, under its one lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from zocalo.errors import TransportError
from zocalo.transport.base import report_standing_by, report_taking_over
from zocalo.transport.messages import Delivery, Subscription
from zocalo.transport.sqlite.store import BROADCAST_BATCH, Row, Store, broadcast_queue


@dataclass(eq=False)
class Consumer:
    """Worker-side state of one subscription."""

    subscription: Subscription
    #: Its row in ``consumers`` and the queue it claims from (a private one for a
    #: broadcast): set when it is registered, again if the broker file is reopened.
    consumer_id: str = ""
    queue: str = ""
    inflight: dict[int, Delivery] = field(default_factory=dict)
    dirty: bool = True  # there may be messages to claim
    saturated: bool = False  # the last claim filled the window: maybe more waiting
    due: float | None = None  # epoch seconds of the next delayed message
    #: Kept from its queue by an exclusive consumer (see Store.exclusive_blocker).
    standing_by: bool = False

    @property
    def room(self) -> int:
        if not self.subscription.active:
            return 0
        if self.subscription.broadcast:
            return BROADCAST_BATCH
        return self.subscription.prefetch - len(self.inflight)

    def register(self, store: Store) -> None:
        """Add its consumer row, as a consumer of the connection ``store`` writes for."""
        subscription = self.subscription
        self.consumer_id = store.consumer_id(subscription.id)
        if subscription.broadcast:
            self.queue = broadcast_queue(self.consumer_id)
        else:
            self.queue = subscription.destination
        store.add_consumer(
            self.consumer_id,
            subscription.destination,
            subscription.broadcast,
            subscription.exclusive,
        )
        if subscription.broadcast and subscription.replay:  # one transaction: none missed
            store.keep(subscription.destination, subscription.replay)
            store.replay(subscription.destination, self.queue, subscription.replay)


Claimed = tuple[Consumer, Delivery]


class Consumers:
    """The consumers of one connection, by subscription id, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._by_subscription: dict[int, Consumer] = {}

    def get(self, subscription: Subscription) -> Consumer | None:
        with self.lock:
            return self._by_subscription.get(subscription.id)

    def add(self, consumer: Consumer) -> None:
        with self.lock:
            self._by_subscription[consumer.subscription.id] = consumer

    def remove(self, consumer: Consumer) -> None:
        with self.lock:
            self._by_subscription.pop(consumer.subscription.id, None)

    def all(self) -> list[Consumer]:
        with self.lock:
            return list(self._by_subscription.values())

    # -- settling (the caller's threads) ------------------------------------
    def take_inflight(self, delivery: Delivery) -> Consumer:
        """Forget ``delivery`` locally, or raise if it is not awaiting settlement."""
        with self.lock:
            consumer = self._by_subscription.get(delivery.subscription.id)
            if (
                consumer is None
                or not delivery.ackable
                or consumer.inflight.get(delivery.receipt) is not delivery
            ):
                raise TransportError(
                    f"{delivery.describe()} is not awaiting acknowledgement "
                    "(already settled, not ackable, or its subscription is gone)"
                )
            del consumer.inflight[delivery.receipt]
            if consumer.saturated:
                consumer.dirty = True
        return consumer

    def restore_inflight(self, delivery: Delivery) -> None:
        """Undo :meth:`take_inflight`: ``delivery`` awaits settlement again."""
        with self.lock:
            consumer = self._by_subscription.get(delivery.subscription.id)
            if consumer is not None:
                consumer.inflight[delivery.receipt] = delivery

    # -- what the worker claims, and when -----------------------------------
    def woken(self, queues: set[str], *, all_queues: bool) -> None:
        """Wake-ups arrived for ``queues`` (or may have been lost: ``all_queues``)."""
        with self.lock:
            for consumer in self._by_subscription.values():
                if all_queues or consumer.queue in queues:
                    consumer.dirty = True

    def to_claim_for(self, *, every_queue: bool) -> list[Consumer]:
        """Consumers with room and maybe messages waiting (all with room: ``every_queue``)."""
        now = time.time()
        with self.lock:
            return [
                c
                for c in self._by_subscription.values()
                if c.room > 0 and (every_queue or c.dirty or (c.due is not None and c.due <= now))
            ]

    def next_claim_at(self, now: float) -> float | None:
        """When (monotonic) a consumer next may claim: ``now`` if one may at once,
        the first delayed message's time otherwise, None if none waits for one."""
        wall = time.time()
        next_due: float | None = None
        with self.lock:
            for consumer in self._by_subscription.values():
                if consumer.dirty and consumer.room > 0:
                    return now
                if consumer.due is not None:
                    at = now + (consumer.due - wall)
                    next_due = at if next_due is None else min(next_due, at)
        return next_due

    def claim(self, store: Store, consumer: Consumer) -> list[Claimed]:
        """Take up to ``room`` ready messages for ``consumer``; drop expired ones."""
        subscription = consumer.subscription
        now = time.time()
        claimed: list[Claimed] = []
        with self.lock:
            consumer.dirty = False
            consumer.due = None
        if not subscription.broadcast and not may_claim(store, consumer):
            return claimed  # woken again when the holder goes (or by the reaper's round)
        while (room := consumer.room) > 0:
            if subscription.broadcast:
                rows = store.take_broadcast_copies(consumer.queue, now)
            else:
                rows = store.claim(consumer.queue, now, room)
            rows.sort(key=lambda row: (-row[3], row[0]))
            expired = [row[0] for row in rows if row[4] is not None and row[4] <= now]
            if expired:
                store.delete_rows(expired)
            live = [
                _delivery(store, subscription, row)
                for row in rows
                if row[4] is None or row[4] > now
            ]
            claimed.extend((consumer, delivery) for delivery in live)
            with self.lock:
                if not subscription.broadcast:
                    consumer.inflight.update((d.receipt, d) for d in live)
                if len(rows) < room:
                    consumer.saturated = False  # the queue has nothing more ready
                    break
                consumer.saturated = True
                if subscription.broadcast:
                    consumer.dirty = True  # a full batch: take the rest next time
                    break
        if consumer.room > 0:
            due = store.next_due(consumer.queue, now)
            with self.lock:
                consumer.due = due
        return claimed

    def unclaim(self, claimed: Iterable[Claimed]) -> None:
        """The transaction that claimed these rolled back: they are not ours after all."""
        with self.lock:
            for consumer, delivery in claimed:
                consumer.inflight.pop(delivery.receipt, None)
                consumer.dirty = True

    def forget_all_inflight(self) -> int:
        """Drop every delivery in flight (their rows stay in an old file); how many."""
        with self.lock:
            abandoned = 0
            for consumer in self._by_subscription.values():
                abandoned += len(consumer.inflight)
                consumer.inflight.clear()
                consumer.dirty = True
        return abandoned


def may_claim(store: Store, consumer: Consumer) -> bool:
    """Whether ``consumer`` may claim from its queue now; logs the start and the end of
    standing by."""
    subscription = consumer.subscription
    blocker = store.exclusive_blocker(consumer.consumer_id, consumer.queue, subscription.exclusive)
    if blocker is None and consumer.standing_by:
        report_taking_over(subscription)
    elif blocker is not None and not consumer.standing_by:
        report_standing_by(subscription, blocker)
    consumer.standing_by = blocker is not None
    return not consumer.standing_by


def _delivery(store: Store, subscription: Subscription, row: Row) -> Delivery:
    row_id, body, headers, _, _, count = row
    return Delivery(
        subscription=subscription,
        message_id=f"{store.path.name}:{row_id}",
        body=bytes(body),
        headers=json.loads(headers),
        delivery_count=max(1, count),
        redelivered=count > 1,
        ackable=not subscription.broadcast,
        receipt=row_id,
    )
