"""An in-process broker for tests and one-process runs: ``memory://NAME``.

Every transport object opened on the same URL name in one process shares one
:class:`MemoryBroker`; each transport object is one "connection", so closing
(or aborting) it returns its unacknowledged deliveries, as a crashed consumer
would. URL options: ``confirm_delay`` (seconds before a publish is confirmed,
to exercise pipelining) and ``delivery_limit``.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zocalo.errors import ConnectionFailed, PublishFailed, TransportError
from zocalo.transport.base import (
    DEFAULT_DELIVERY_LIMIT,
    Acks,
    Callback,
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    QueueStats,
    Subscription,
    Transport,
    checked_duration,
    confirmed,
    deliveries_to_ack,
    report_dropped,
    report_standing_by,
    report_taking_over,
)
from zocalo.transport.dead_letters import (
    dead_letter_headers,
    delivery_entry,
    delivery_limit_reason,
    dlq_name,
    is_dead_letter_queue,
)
from zocalo.transport.options import Option, parse_options, split_url

log = logging.getLogger(__name__)

_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


@dataclass
class _Stored:
    """A message held by the broker."""

    id: str
    body: bytes
    headers: dict[str, Any]
    priority: int = 0
    expires_at: float | None = None
    delivery_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Kept:
    """What a kept topic holds: its messages of the last ``seconds``, oldest first."""

    seconds: float
    messages: deque[tuple[float, _Stored]] = field(default_factory=deque)

    def add(self, message: _Stored) -> None:
        now = time.time()
        self.messages.append((now, message))
        while self.messages and self.messages[0][0] < now - self.seconds:
            self.messages.popleft()

    def since(self, seconds: float) -> list[_Stored]:
        """Those of the last ``seconds`` not expired, oldest first."""
        now = time.time()
        return [
            message
            for at, message in self.messages
            if at >= now - seconds and (message.expires_at is None or message.expires_at > now)
        ]


@dataclass
class _Queue:
    ready: list[tuple[int, int, _Stored]] = field(default_factory=list)  # (-priority, seq, msg)
    delayed: list[tuple[float, int, _Stored]] = field(default_factory=list)  # (due, seq, msg)


class MemoryBroker:
    """Queues, topics and in-flight bookkeeping shared by memory transports."""

    def __init__(self, name: str, confirm_delay: float = 0.0) -> None:
        self.name = name
        self.confirm_delay = confirm_delay
        self.condition = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.topics: dict[str, list[_Consumer]] = {}
        self.consumers: set[_Consumer] = set()
        #: queue -> (topic, time.monotonic() until which it is kept without a consumer)
        self.bindings: dict[str, tuple[str, float]] = {}
        #: Topics whose broadcasts are kept (``keep_broadcasts``).
        self.kept: dict[str, _Kept] = {}
        #: queue -> the exclusive consumer holding it (``subscribe(exclusive=True)``).
        self.holders: dict[str, _Consumer] = {}
        self.expired = 0
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._confirmer: _DelayedConfirmer | None = None

    # All methods below expect self.condition to be held.
    def queue(self, name: str) -> _Queue:
        return self.queues.setdefault(name, _Queue())

    def new_id(self) -> str:
        return f"{self.name}-{next(self._ids)}"

    def enqueue(self, queue: str, message: _Stored, delay: float | None = None) -> None:
        target = self.queue(queue)
        if delay:
            heapq.heappush(target.delayed, (time.monotonic() + delay, next(self._seq), message))
        else:
            heapq.heappush(target.ready, (-message.priority, next(self._seq), message))
        self.condition.notify_all()

    def take(self, queue: str) -> tuple[_Stored | None, float | None]:
        """Pop the next deliverable message, or (None, seconds until one may be due)."""
        target = self.queue(queue)
        now = time.monotonic()
        while target.delayed and target.delayed[0][0] <= now:
            _, _, message = heapq.heappop(target.delayed)
            heapq.heappush(target.ready, (-message.priority, next(self._seq), message))
        while target.ready:
            _, _, message = heapq.heappop(target.ready)
            if message.expires_at is not None and message.expires_at <= time.time():
                self.expired += 1
                continue
            return message, None
        wait = target.delayed[0][0] - now if target.delayed else None
        return None, wait

    def blocker(self, consumer: _Consumer) -> str | None:
        """Who keeps ``consumer`` from its queue (it stands by), or None: it may take.

        An exclusive consumer holds a queue from its first take until its subscription
        ends; it waits while a non-exclusive consumer reads the queue. Exclusive
        standbys compete for the hold: the first to look takes it.
        """
        queue = consumer.subscription.destination
        holder = self.holders.get(queue)
        if holder is not None and not holder.subscription.active:
            del self.holders[queue]
            holder = None
        if holder is consumer:
            return None
        if holder is not None:
            return "another exclusive consumer"
        if not consumer.subscription.exclusive:
            return None
        sharing = [
            other
            for other in self.consumers
            if other.subscription.destination == queue
            and other.subscription.active
            and not other.subscription.broadcast
            and not other.subscription.exclusive
        ]
        if sharing:
            return f"{len(sharing)} non-exclusive consumer(s)"
        self.holders[queue] = consumer
        return None

    def keep(self, topic: str, seconds: float) -> _Kept:
        """Keep ``topic``'s broadcasts (a topic kept already keeps its length)."""
        return self.kept.setdefault(topic, _Kept(seconds))

    def give_back(self, queue: str, message: _Stored, reason: str, limit: int) -> None:
        """Return a delivered message to its queue, or dead-letter it past ``limit``."""
        message.history.append(delivery_entry(queue, reason, message.delivery_count))
        if message.delivery_count >= limit and not is_dead_letter_queue(queue):
            why = delivery_limit_reason(message.delivery_count, limit, reason)
            self.dead_letter(queue, message, why)
        else:
            self.enqueue(queue, message)

    def dead_letter(self, queue: str, message: _Stored, reason: str) -> None:
        if is_dead_letter_queue(queue):  # already a dead letter: it stays, its reason intact
            self.enqueue(queue, message)
            return
        headers = dead_letter_headers(
            message.headers, reason=reason, queue=queue, history=list(message.history)
        )
        dead = _Stored(message.id, message.body, headers, message.priority)
        self.enqueue(dlq_name(queue), dead)

    @property
    def confirmer(self) -> _DelayedConfirmer:
        if self._confirmer is None:
            self._confirmer = _DelayedConfirmer(self.confirm_delay)
        return self._confirmer


#: The URL options ``memory://NAME?...`` understands.
OPTIONS = (
    Option("confirm_delay", float, 0.0, at_least=0),
    Option("delivery_limit", int, DEFAULT_DELIVERY_LIMIT, at_least=1),
)


def broker_for(url: str) -> MemoryBroker:
    """The shared broker named by a ``memory://NAME`` URL, created on first use."""
    parts = split_url(url)
    name = parts.netloc + parts.path or "default"
    options = parse_options(url, OPTIONS)
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            delay = options["confirm_delay"]
            broker = _brokers[name] = MemoryBroker(name, confirm_delay=delay)
        return broker


class _DelayedConfirmer:
    """Runs confirmations after a fixed delay, in order, on one thread."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.pending: deque[tuple[float, Any]] = deque()
        self.condition = threading.Condition()
        threading.Thread(target=self._run, name="memory-confirmer", daemon=True).start()

    def schedule(self, action: Any) -> None:
        with self.condition:
            self.pending.append((time.monotonic() + self.delay, action))
            self.condition.notify()

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.pending:
                    self.condition.wait()
                due, action = self.pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.condition.wait(wait)
                    continue
                self.pending.popleft()
            action()


class _Consumer:
    """One subscription's delivery loop and its unacknowledged messages."""

    def __init__(self, transport: MemoryTransport, subscription: Subscription) -> None:
        self.transport = transport
        self.subscription = subscription
        self.unacked: dict[str, _Stored] = {}
        self.inbox: deque[_Stored] = deque()  # broadcast copies
        #: Kept from its queue by an exclusive consumer (see MemoryBroker.blocker).
        self.standing_by = False
        self.thread = threading.Thread(
            target=self._run, name=f"memory-{subscription.describe()}", daemon=True
        )

    @property
    def broker(self) -> MemoryBroker:
        return self.transport.broker

    def _next(self) -> Delivery | None:
        """Wait for the next message to deliver; None once the subscription ends."""
        broker, subscription = self.broker, self.subscription
        with broker.condition:
            while subscription.active:
                if subscription.broadcast:
                    if self.inbox:
                        return self._delivery(self.inbox.popleft())
                    broker.condition.wait()
                    continue
                wait = None
                if len(self.unacked) < subscription.prefetch and (
                    # Nothing held exclusively here, and this consumer neither exclusive nor
                    # standing by (the usual case): it may take without asking blocker().
                    not (broker.holders or subscription.exclusive or self.standing_by)
                    or self.may_take()
                ):
                    message, wait = broker.take(subscription.destination)
                    if message is not None:
                        message.delivery_count += 1
                        self.unacked[message.id] = message
                        return self._delivery(message)
                broker.condition.wait(wait)
        return None

    def may_take(self) -> bool:
        """Whether this consumer may take from its queue now (lock held); logs the
        start and the end of standing by."""
        blocker = self.broker.blocker(self)
        if blocker is None and self.standing_by:
            report_taking_over(self.subscription)
        elif blocker is not None and not self.standing_by:
            report_standing_by(self.subscription, blocker)
        self.standing_by = blocker is not None
        return not self.standing_by

    def _delivery(self, message: _Stored) -> Delivery:
        """Snapshot ``message`` for the callback (lock held): once the lock is released
        the message may be returned and redelivered elsewhere, and receivers must not
        share (mutable, nested) headers with the broker's copy or with each other."""
        return Delivery(
            subscription=self.subscription,
            message_id=message.id,
            body=message.body,
            headers=copy.deepcopy(message.headers),
            delivery_count=message.delivery_count or 1,
            redelivered=message.delivery_count > 1,
            ackable=not self.subscription.broadcast,
            receipt=self,
        )

    def _run(self) -> None:
        subscription = self.subscription
        while (delivery := self._next()) is not None:
            self.transport.hand_over(subscription, delivery)


class MemoryTransport(Transport):
    """In-process transport with every optional feature (no cross-process)."""

    schemes = ("memory",)
    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.EXPIRATION,
            Capability.DELIVERY_COUNT,
            Capability.DEAD_LETTER,
            Capability.REPLY_QUEUE,
            Capability.KEPT_BROADCASTS,
            Capability.EXCLUSIVE,
        }
    )

    def __init__(self, url: str = "memory://", *, delivery_limit: int | None = None) -> None:
        options = parse_options(url, OPTIONS, {"delivery_limit": delivery_limit})
        super().__init__(url, delivery_limit=options["delivery_limit"])
        self.broker = broker_for(url)
        self._consumers: dict[int, _Consumer] = {}
        self._connected = False
        #: The reply queues this connection declared: they go when it closes.
        self._reply_queues: set[str] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def close(self) -> None:
        broker = self.broker
        with broker.condition:
            self._connected = False
            consumers = list(self._consumers.values())
            self._consumers.clear()
            for consumer in consumers:
                consumer.subscription.active = False
                broker.consumers.discard(consumer)
                self._return_unacked(consumer, "connection closed")
                if consumer.subscription.broadcast:
                    subscribers = broker.topics.get(consumer.subscription.destination, [])
                    if consumer in subscribers:
                        subscribers.remove(consumer)
            for queue in self._reply_queues:  # after the returns, which may refill them
                broker.queues.pop(queue, None)
            self._reply_queues.clear()
            broker.condition.notify_all()
        for consumer in consumers:
            if consumer.thread is not threading.current_thread():
                consumer.thread.join(timeout=5)

    def _return_unacked(self, consumer: _Consumer, reason: str) -> None:
        for message in consumer.unacked.values():
            self.broker.give_back(
                consumer.subscription.destination, message, reason, self.delivery_limit
            )
        consumer.unacked.clear()

    def _require_connected(self) -> None:
        if not self._connected:
            raise ConnectionFailed(f"memory transport {self.url!r} is not connected")

    def _start(self, subscription: Subscription) -> Subscription:
        self._require_connected()
        consumer = _Consumer(self, subscription)
        with self.broker.condition:
            self._consumers[subscription.id] = consumer
            self.broker.consumers.add(consumer)
            if not subscription.broadcast:
                consumer.may_take()  # an exclusive one holds its queue from now, if it can
            if subscription.broadcast:
                if subscription.replay:  # under the lock: nothing missed, nothing twice
                    kept = self.broker.keep(subscription.destination, subscription.replay)
                    consumer.inbox.extend(kept.since(subscription.replay))
                self.broker.topics.setdefault(subscription.destination, []).append(consumer)
        consumer.thread.start()
        return subscription

    def subscribe(
        self, queue: str, callback: Callback, *, prefetch: int = 1, exclusive: bool = False
    ) -> Subscription:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        return self._start(
            Subscription(
                self._next_subscription_id(),
                queue,
                callback,
                prefetch=prefetch,
                exclusive=exclusive,
            )
        )

    def subscribe_broadcast(
        self, topic: str, callback: Callback, *, replay: float = 0.0
    ) -> Subscription:
        return self._start(
            Subscription(
                self._next_subscription_id(), topic, callback, broadcast=True, replay=replay
            )
        )

    def keep_broadcasts(self, topic: str, *, seconds: float) -> None:
        self._require_connected()
        with self.broker.condition:
            self.broker.keep(topic, seconds)

    def declare_reply_queue(self, queue: str) -> str:
        """A queue exists here once something was sent to it or consumed it; a reply
        queue, from now until this connection closes (then it is forgotten, with what
        it holds, after the consumers' unacknowledged messages were put back in it)."""
        self._require_connected()
        with self.broker.condition:
            if queue in self._reply_queues:
                return queue
            if queue in self.broker.queues:
                raise TransportError(
                    f"queue {queue!r} exists already: a reply queue needs a new name"
                )
            self.broker.queue(queue)
            self._reply_queues.add(queue)
        return queue

    def delete_reply_queue(self, queue: str) -> None:
        with self.broker.condition:
            if queue in self._reply_queues:
                self._reply_queues.discard(queue)
                self.broker.queues.pop(queue, None)

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        expires = checked_duration("expires", expires, f"queue {queue!r}", positive=True)
        with self.broker.condition:
            self.broker.bindings[queue] = (topic, time.monotonic() + expires)

    def unsubscribe(self, subscription: Subscription) -> None:
        broker = self.broker
        with broker.condition:
            consumer = self._consumers.get(subscription.id)
            if consumer is None or not subscription.active:
                raise TransportError(f"{subscription.describe()} is not subscribed")
            subscription.active = False
            if subscription.broadcast:
                broker.topics.get(subscription.destination, []).remove(consumer)
            if not consumer.unacked:
                self._retire(consumer)
            broker.condition.notify_all()

    def _retire(self, consumer: _Consumer) -> None:
        """Forget an unsubscribed consumer that holds nothing (lock held): it no longer
        counts as consuming its queue."""
        self._consumers.pop(consumer.subscription.id, None)
        self.broker.consumers.discard(consumer)

    def _owned(self, delivery: Delivery) -> tuple[_Consumer, _Stored]:
        """``delivery``'s consumer and message if it awaits settlement (lock held), or raise."""
        consumer = delivery.receipt
        if not delivery.ackable or not isinstance(consumer, _Consumer):
            raise TransportError(f"{delivery.describe()} cannot be acknowledged")
        message = consumer.unacked.get(delivery.message_id)
        # The same message may have been redelivered here since: an old handle
        # (an earlier delivery_count) must not settle the new delivery.
        if message is None or message.delivery_count != delivery.delivery_count:
            raise TransportError(
                f"{delivery.describe()} is not awaiting acknowledgement "
                "(already settled, or returned when its connection closed)"
            )
        return consumer, message

    def _settle(self, delivery: Delivery) -> tuple[_Consumer, _Stored]:
        """Remove ``delivery`` from its consumer's unacknowledged set (lock held)."""
        consumer, message = self._owned(delivery)
        del consumer.unacked[delivery.message_id]
        if not consumer.subscription.active and not consumer.unacked:
            self._retire(consumer)
        self.broker.condition.notify_all()
        return consumer, message

    def _ack(self, delivery: Delivery) -> None:
        with self.broker.condition:
            self._settle(delivery)

    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        broker = self.broker
        with broker.condition:
            consumer, message = self._settle(delivery)
            queue = consumer.subscription.destination
            if requeue:
                broker.give_back(queue, message, reason or "rejected", self.delivery_limit)
            else:
                message.history.append(
                    delivery_entry(queue, reason or "rejected", message.delivery_count)
                )
                broker.dead_letter(queue, message, reason or "rejected without requeue")

    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        self._require_connected()
        for message in messages:
            self.check_supported(message)
        acks = deliveries_to_ack(ack)
        if self.broker.confirm_delay <= 0:
            self._commit(messages, acks)
            return confirmed()
        confirmation = Confirmation()

        def commit_later() -> None:
            try:
                self._commit(messages, acks)
            except Exception as error:
                confirmation.set_exception(error)
            else:
                confirmation.set_result(None)

        self.broker.confirmer.schedule(commit_later)
        return confirmation

    def _commit(self, messages: Sequence[Outgoing], acks: list[Delivery]) -> None:
        broker = self.broker
        with broker.condition:
            for delivery in acks:  # all or none: check every one before settling any
                self._owned(delivery)
            stored = [
                (message, self._store(message)) for message in messages if self._routable(message)
            ]
            for delivery in acks:
                self._settle(delivery)
            for message, copy_ in stored:
                if message.broadcast:
                    kept = broker.kept.get(message.destination)
                    if kept is not None:
                        kept.add(copy_)
                    for consumer in broker.topics.get(message.destination, []):
                        consumer.inbox.append(copy_)
                    for queue in self._bound_queues(message.destination):
                        broker.enqueue(queue, self._store(message))
                    broker.condition.notify_all()
                else:
                    broker.enqueue(message.destination, copy_, message.delay)

    def _routable(self, message: Outgoing) -> bool:
        """False for a droppable message whose queue does not exist (dropped, logged)."""
        if not message.droppable or message.broadcast or message.destination in self.broker.queues:
            return True
        report_dropped(message, "the queue does not exist")
        return False

    def _bound_queues(self, topic: str) -> list[str]:
        """Queues bound to ``topic`` and still kept (lock held); forgets expired ones."""
        broker, now = self.broker, time.monotonic()
        consumed = {c.subscription.destination for c in broker.consumers}
        for queue, (_, until) in list(broker.bindings.items()):
            if until < now and queue not in consumed:
                del broker.bindings[queue]
                broker.queues.pop(queue, None)
        return [queue for queue, (bound, _) in broker.bindings.items() if bound == topic]

    def _store(self, message: Outgoing) -> _Stored:
        """The broker's copy of ``message`` (lock held)."""
        expires_at = (
            time.time() + (message.delay or 0) + message.expiration
            if message.expiration is not None
            else None
        )
        try:
            # A deep copy, as a wire would: later changes by the sender don't leak in.
            headers = copy.deepcopy(dict(message.headers))
        except Exception as error:
            raise PublishFailed(
                f"cannot publish to {message.describe()}: its headers cannot be copied "
                f"({type(error).__name__}: {error})"
            ) from None
        return _Stored(
            self.broker.new_id(), message.body, headers, message.priority or 0, expires_at
        )

    # -- introspection -------------------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        broker = self.broker
        with broker.condition:
            in_flight: dict[str, int] = {}
            consumers: dict[str, int] = {}
            for consumer in broker.consumers:
                if consumer.subscription.broadcast:
                    continue
                name = consumer.subscription.destination
                in_flight[name] = in_flight.get(name, 0) + len(consumer.unacked)
                consumers[name] = consumers.get(name, 0) + 1
            names = sorted(set(broker.queues) | set(consumers))
            return [
                QueueStats(
                    name,
                    len(broker.queues[name].ready) if name in broker.queues else 0,
                    len(broker.queues[name].delayed) if name in broker.queues else 0,
                    in_flight.get(name, 0),
                    consumers.get(name, 0),
                )
                for name in names
            ]
