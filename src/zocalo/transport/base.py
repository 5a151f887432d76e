"""The one transport contract every broker implements.

A transport is one connection to a broker. It moves opaque byte bodies with
headers; it knows nothing of recipes. Callbacks run on a thread the transport
owns, so they must be quick (the service runner only enqueues deliveries).

The central primitive is :meth:`Transport.publish`: publish a batch of
outgoing messages and, once the broker has accepted *all* of them, acknowledge
the input(s) that produced them. It returns a :class:`Confirmation` (a future)
so the caller can keep working while the broker confirms.

python-workflows' transactions (``transaction_begin`` / ``ack(...,
transaction=)`` / ``send(..., transaction=)`` / ``transaction_commit``) are
emulated on the client, once, here: a transaction is a buffer, and its commit
is one ``publish`` of the buffered messages acking the buffered inputs. No
broker transaction is involved (see :class:`Transport`).
"""

from __future__ import annotations

import enum
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from zocalo.errors import PublishFailed, TransportError, UnsupportedFeature, ZocaloError
from zocalo.transport.dead_letters import (  # re-exported: part of the transport contract
    BROKER_HEADERS as BROKER_HEADERS,
)
from zocalo.transport.dead_letters import (
    DLQ_HISTORY_HEADER as DLQ_HISTORY_HEADER,
)
from zocalo.transport.dead_letters import (
    DLQ_QUEUE_HEADER as DLQ_QUEUE_HEADER,
)
from zocalo.transport.dead_letters import (
    DLQ_REASON_HEADER as DLQ_REASON_HEADER,
)
from zocalo.transport.dead_letters import (
    dlq_name as dlq_name,
)
from zocalo.transport.dead_letters import (
    without_broker_headers as without_broker_headers,
)

log = logging.getLogger(__name__)

#: Deliveries beyond this count move a message to ``dlq.<queue>``.
DEFAULT_DELIVERY_LIMIT = 5


class Capability(enum.Enum):
    """Optional features. A transport refuses what it lacks with UnsupportedFeature."""

    DELAY = "delay"
    PRIORITY = "priority"
    EXPIRATION = "expiration"
    DELIVERY_COUNT = "delivery-count"
    DEAD_LETTER = "dead-letter"
    CROSS_PROCESS = "cross-process"
    DELAYED_BROADCAST = "delayed-broadcast"


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: to a queue, or broadcast to a topic."""

    destination: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    broadcast: bool = False
    delay: float | None = None
    priority: int | None = None
    expiration: float | None = None

    def describe(self) -> str:
        kind = "topic" if self.broadcast else "queue"
        return f"{kind} {self.destination!r}"


@dataclass
class Delivery:
    """A message handed to a subscription callback.

    ``delivery_count`` is 1 on the first delivery; ``redelivered`` is true
    when the broker has handed this message out before. Broadcast deliveries
    need no ack (``ackable`` is false).
    """

    subscription: Subscription
    message_id: str
    body: bytes
    headers: dict[str, Any]
    delivery_count: int = 1
    redelivered: bool = False
    ackable: bool = True
    #: What the transport that delivered this message needs to settle it (RabbitMQ:
    #: channel and delivery tag; SQLite: the row id; memory: the consumer). Opaque
    #: to everyone else, and never compared across transports.
    receipt: Any = None

    @property
    def source(self) -> str:
        return self.subscription.destination

    def describe(self) -> str:
        return f"message {self.message_id} from {self.subscription.describe()}"


Callback = Callable[[Delivery], None]


@dataclass(eq=False)
class Subscription:
    """A live subscription, returned by subscribe calls and used to unsubscribe."""

    id: int
    destination: str
    callback: Callback
    broadcast: bool = False
    prefetch: int = 1
    active: bool = True

    def describe(self) -> str:
        kind = "topic" if self.broadcast else "queue"
        return f"{kind} {self.destination!r}"


@dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds, by state."""

    queue: str
    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    consumers: int = 0


class Confirmation(Future):
    """Completes when the broker has accepted a publish (and the ack is sent).

    On failure the exception names the destination that could not take the
    message; the input was then not acknowledged.
    """


def confirmed() -> Confirmation:
    """An already successful confirmation, for transports that settle inline."""
    done = Confirmation()
    done.set_result(None)
    return done


#: What ``publish(..., ack=)`` takes: one delivery, several, or none.
Acks = Delivery | Sequence[Delivery] | None


def deliveries_to_ack(ack: Acks) -> list[Delivery]:
    """``publish``'s ``ack`` argument as a list; a delivery listed twice is refused."""
    if ack is None:
        return []
    if isinstance(ack, Delivery):
        return [ack]
    deliveries = list(ack)
    seen: set[int] = set()
    for delivery in deliveries:
        if not isinstance(delivery, Delivery):
            raise TypeError(f"ack= takes deliveries, not {type(delivery).__name__}")
        if id(delivery) in seen:
            raise TransportError(f"{delivery.describe()} is listed twice in one publish")
        seen.add(id(delivery))
    return deliveries


def take_all(
    deliveries: Sequence[Delivery],
    take: Callable[[Delivery], Any],
    give_back: Callable[[Delivery], Any],
) -> None:
    """Claim every delivery for one publish, or none: on a refusal, give back those
    claimed so far (they are still the caller's) and re-raise."""
    taken: list[Delivery] = []
    try:
        for delivery in deliveries:
            take(delivery)
            taken.append(delivery)
    except TransportError:
        for delivery in taken:
            give_back(delivery)
        raise


@dataclass(eq=False)
class _Transaction:
    """A client-side transaction: what to do, all at once, on commit."""

    id: int
    messages: list[Outgoing] = field(default_factory=list)
    acks: list[Delivery] = field(default_factory=list)
    #: (delivery, requeue, reason), applied once the publish is confirmed.
    nacks: list[tuple[Delivery, bool, str]] = field(default_factory=list)

    def holds(self, delivery: Delivery) -> bool:
        return any(d is delivery for d in self.acks) or any(d is delivery for d, _, _ in self.nacks)


class Transport(ABC):
    """Abstract broker connection. One subclass per broker in ``zocalo.transport``.

    Subclasses implement ``publish``, ``_ack`` and ``_nack`` (and the connection
    and subscription methods); ``ack``/``nack``/``send``/``broadcast`` and the
    transaction methods are built on those here, once for every broker.

    Transactions are python-workflows' API, emulated on the client: a dict of
    buffers under a lock. ``ack``/``nack``/``send``/``broadcast`` given
    ``transaction=`` only add to the buffer; ``transaction_commit`` is one
    atomic :meth:`publish` of the buffered messages acking every buffered input,
    and waits for it. Nothing is asked of the broker before the commit, so a
    transaction costs no round trips of its own (an AMQP ``tx.commit`` is a
    synchronous round trip, and a channel cannot be in tx and confirm mode at
    once; we publish with confirms). Unlike an AMQP transaction, a commit
    whose output the broker cannot route fails, and acks nothing.
    """

    #: Features this transport honours; others are refused, never ignored.
    capabilities: frozenset[Capability] = frozenset()
    #: URL scheme(s) selecting this transport.
    schemes: tuple[str, ...] = ()
    #: True when every callback of one connection runs on a single thread, one at a
    #: time, in delivery order: the runner may then call handlers right there.
    serial_callbacks: bool = False

    def __init__(self, url: str, *, delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> None:
        self.url = url
        self.delivery_limit = delivery_limit
        self._subscription_ids = 0
        self._transaction_ids = 0
        self._transactions: dict[int, _Transaction] = {}
        self._id_lock = threading.Lock()
        self._transaction_lock = threading.Lock()
        #: Called with a reason when the transport can no longer serve a subscription.
        self.failure_listeners: list[Callable[[str], None]] = []

    # -- connection ---------------------------------------------------------
    @abstractmethod
    def connect(self) -> None:
        """Open the connection; raise :class:`zocalo.errors.TransportError` if impossible."""

    @abstractmethod
    def close(self) -> None:
        """Close cleanly: unacknowledged deliveries return to their queues."""

    def abort(self) -> None:
        """Drop the connection as a crash would (no goodbye). Defaults to close."""
        self.close()

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    def report_failure(self, reason: str) -> None:
        """Log ``reason`` and tell the listeners: the owner should stop with an error
        (a supervisor then restarts it) rather than wait for deliveries that never come."""
        log.error("%s", reason)
        for listener in list(self.failure_listeners):
            listener(reason)

    def __enter__(self) -> Transport:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consuming ----------------------------------------------------------
    def declare_queue(self, queue: str) -> None:
        """Make sure ``queue`` exists. Brokers that create queues on first use need nothing.

        On RabbitMQ a send to a queue nobody declared fails (it is unroutable);
        subscribing declares the queue, and so does this.
        """
        return None

    @abstractmethod
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> Subscription:
        """Consume ``queue`` with at most ``prefetch`` unacknowledged deliveries."""

    @abstractmethod
    def subscribe_broadcast(self, topic: str, callback: Callback) -> Subscription:
        """Receive copies of messages broadcast to ``topic`` from now on."""

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        """Make ``queue`` receive a copy of every message broadcast to ``topic``.

        Unlike a broadcast subscription, the queue outlives its consumer: what is
        broadcast while nobody consumes it waits there for the next consumer (a
        service's shutdown command sent while its worker restarts). It goes away,
        with its messages, once it has had no consumer and no new ``bind_queue``
        for ``expires`` seconds. Consume it with :meth:`subscribe`; binding again
        is harmless (and keeps it).
        """
        raise UnsupportedFeature(f"{type(self).__name__} cannot bind a queue to a topic")

    @abstractmethod
    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop deliveries; unacknowledged ones stay owed until acked/nacked or closed."""

    def ack(self, delivery: Delivery, *, transaction: int | None = None) -> None:
        """Acknowledge ``delivery``: the broker forgets it.

        With ``transaction`` (python-workflows' keyword) the ack is held in that
        transaction and happens only if, and when, it commits.
        """
        if transaction is None:
            self._ack(delivery)
            return
        self._hold(transaction, delivery, lambda txn: txn.acks.append(delivery))

    def nack(
        self,
        delivery: Delivery,
        *,
        requeue: bool = True,
        reason: str = "",
        transaction: int | None = None,
    ) -> None:
        """Return a delivery: to its queue (``requeue``) or to ``dlq.<queue>`` with ``reason``.

        With ``transaction`` the nack is applied after the transaction's commit
        was confirmed (as an AMQP ``tx.commit`` applies it); a failed or aborted
        transaction leaves the delivery unsettled, in the caller's hands.
        """
        if transaction is None:
            self._nack(delivery, requeue=requeue, reason=reason)
            return
        self._hold(transaction, delivery, lambda txn: txn.nacks.append((delivery, requeue, reason)))

    @abstractmethod
    def _ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery`` now (implementations)."""

    @abstractmethod
    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        """Return ``delivery`` now (implementations): see :meth:`nack`."""

    # -- publishing ---------------------------------------------------------
    @abstractmethod
    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        """Publish ``messages``; once all are accepted, ack every delivery in ``ack``.

        ``ack`` is one delivery, a sequence of them (from any subscriptions of
        this connection), or None. Atomic per call: returns at once; the
        confirmation completes when the broker accepted everything and the
        inputs are acknowledged. If anything fails, no input is acked (each
        stays unsettled, for the caller to nack or the broker to redeliver)
        and the error names the destination that failed.
        """

    def send(
        self,
        queue: str,
        body: bytes | str,
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | None = None,
        priority: int | None = None,
        expiration: float | None = None,
        timeout: float | None = 30.0,
        transaction: int | None = None,
    ) -> None:
        """Send one message to a queue and wait until the broker accepted it.

        With ``transaction`` it is only added to that transaction (and checked
        for features this transport lacks); it is published on commit.
        """
        message = Outgoing(
            queue, _as_bytes(body), dict(headers or {}), False, delay, priority, expiration
        )
        if transaction is not None:
            self.transaction_add(transaction, message)
            return
        self.publish([message]).result(timeout)

    def broadcast(
        self,
        topic: str,
        body: bytes | str,
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | None = None,
        expiration: float | None = None,
        timeout: float | None = 30.0,
        transaction: int | None = None,
    ) -> None:
        """Broadcast one message to every current subscriber of ``topic``.

        With ``transaction`` it is broadcast when that transaction commits.
        """
        message = Outgoing(
            topic, _as_bytes(body), dict(headers or {}), True, delay, None, expiration
        )
        if transaction is not None:
            self.transaction_add(transaction, message)
            return
        self.publish([message]).result(timeout)

    # -- client-side transactions (python-workflows' API) --------------------
    def hand_over(self, subscription: Subscription, delivery: Delivery) -> None:
        """Run ``subscription``'s callback on ``delivery``; a callback that raises
        gets one log line and its message back on the queue (never a dead thread).

        Every transport's callback thread calls this, so what a raising callback
        means is decided here once.
        """
        try:
            subscription.callback(delivery)
        except Exception:
            log.exception("callback for %s raised; returning it", delivery.describe())
            if delivery.ackable:
                try:
                    self.nack(delivery, requeue=True, reason="callback raised")
                except TransportError as error:
                    log.warning("cannot return %s: %s", delivery.describe(), error)

    def transaction_begin(self, subscription_id: int | Subscription | None = None) -> int:
        """Open a transaction; returns its id (1, 2, ... per connection).

        Sends, broadcasts, acks and nacks given ``transaction=`` this id are
        held until :meth:`transaction_commit`. ``subscription_id`` is accepted
        for compatibility with python-workflows (where it picks the AMQP
        channel to put in tx mode); here a transaction may settle deliveries
        of any subscription of this connection.
        """
        del subscription_id  # accepted, not needed: see above
        with self._transaction_lock:
            self._transaction_ids += 1
            txn = _Transaction(self._transaction_ids)
            self._transactions[txn.id] = txn
        return txn.id

    def transaction_add(self, transaction_id: int, *messages: Outgoing) -> None:
        """Hold ``messages`` in a transaction, to publish on commit.

        Features this transport lacks are refused now, not at commit.
        """
        for message in messages:
            self.check_supported(message)
        with self._transaction_lock:
            self._open_transaction(transaction_id).messages.extend(messages)

    def transaction_commit(self, transaction_id: int, *, timeout: float | None = 30.0) -> None:
        """Publish everything the transaction holds and ack its inputs, atomically.

        One :meth:`publish` of the held messages with every held ack; returns
        once the broker confirmed it, then applies held nacks. On failure raises
        :class:`~zocalo.errors.PublishFailed` naming the destination: no input
        of the transaction was acked (they are redelivered once this connection
        lets go of them, or can be nacked). The transaction is over either way.
        """
        with self._transaction_lock:
            txn = self._open_transaction(transaction_id)
            del self._transactions[transaction_id]
        inputs = len(txn.acks)
        try:
            self.publish(txn.messages, ack=txn.acks).result(timeout)
        except TimeoutError:
            raise PublishFailed(
                f"transaction {transaction_id}: the broker did not confirm its "
                f"{len(txn.messages)} message(s) within {timeout} s; its {inputs} input(s) "
                "are acknowledged only if it still does"
            ) from None
        except ZocaloError as error:
            raise PublishFailed(
                f"transaction {transaction_id} failed and acknowledged none of its "
                f"{inputs} input(s): {error}"
            ) from error
        for delivery, requeue, reason in txn.nacks:
            try:
                self._nack(delivery, requeue=requeue, reason=reason)
            except ZocaloError as error:
                # It stays unsettled and comes back: what a requeue asked for anyway.
                log.warning(
                    "transaction %d committed, but its nack of %s failed: %s",
                    transaction_id,
                    delivery.describe(),
                    error,
                )

    def transaction_abort(self, transaction_id: int) -> None:
        """Drop everything the transaction holds: nothing is published, acked or nacked.

        Deliveries acked in it stay unsettled, as after python-workflows'
        ``tx.rollback``: they return to their queue when this connection lets
        go of them (close, crash), or at once if the caller nacks them.
        """
        with self._transaction_lock:
            self._open_transaction(transaction_id)
            del self._transactions[transaction_id]

    def _open_transaction(self, transaction_id: int) -> _Transaction:
        """The open transaction ``transaction_id``, or a clear error (lock held)."""
        txn = self._transactions.get(transaction_id)
        if txn is None:
            raise TransportError(
                f"transaction {transaction_id!r} is not open on this connection "
                f"(unknown, or already committed or aborted)"
            )
        return txn

    def _hold(
        self, transaction_id: int, delivery: Delivery, add: Callable[[_Transaction], None]
    ) -> None:
        if not delivery.ackable:
            raise TransportError(f"{delivery.describe()} cannot be acknowledged")
        with self._transaction_lock:
            txn = self._open_transaction(transaction_id)
            if txn.holds(delivery):
                raise TransportError(
                    f"{delivery.describe()} is already settled in transaction {transaction_id}"
                )
            add(txn)

    # -- introspection ------------------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        """Every queue that holds messages or has consumers, with counts by state."""
        raise UnsupportedFeature(f"{type(self).__name__} cannot report queue depths")

    def depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (ready or delayed, not in flight)."""
        return sum(s.ready + s.delayed for s in self.queue_stats() if s.queue == queue)

    # -- helpers for implementations ----------------------------------------
    def check_supported(self, message: Outgoing) -> None:
        """Refuse features this transport cannot honour, naming them."""
        wanted = {
            Capability.DELAY: message.delay,
            Capability.PRIORITY: message.priority,
            Capability.EXPIRATION: message.expiration,
        }
        if message.broadcast and message.delay is not None:
            wanted[Capability.DELAYED_BROADCAST] = message.delay
        for capability, value in wanted.items():
            if value is not None and capability not in self.capabilities:
                raise UnsupportedFeature(
                    f"{type(self).__name__} cannot honour {capability.value}={value!r} "
                    f"for {message.describe()}"
                )

    def _next_subscription_id(self) -> int:
        with self._id_lock:
            self._subscription_ids += 1
            return self._subscription_ids


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body
