"""The one transport contract every broker implements.

A transport is one connection to a broker. It moves opaque byte bodies with
headers; it knows nothing of recipes. Callbacks run on a thread the transport
owns, one at a time (``serial_callbacks``: the service runner calls handlers right
there), never on the thread that talks to the broker.

The central primitive is :meth:`Transport.publish`: publish a batch of
outgoing messages and, once the broker has accepted *all* of them, acknowledge
the input(s) that produced them. It returns a :class:`Confirmation` (a future)
so the caller can keep working while the broker confirms.

The values crossing the contract (:class:`Outgoing`, :class:`Delivery`, ...)
are defined in :mod:`zocalo.transport.messages`, python-workflows'
transactions are emulated in :mod:`zocalo.transport.transactions`; both are
re-exported here, where callers import them.
"""

from __future__ import annotations

import enum
import logging
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zocalo.errors import TransportError, UnsupportedFeature
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
from zocalo.transport.messages import (  # re-exported: the values of the contract
    Acks as Acks,
)
from zocalo.transport.messages import (
    Callback as Callback,
)
from zocalo.transport.messages import (
    Confirmation as Confirmation,
)
from zocalo.transport.messages import (
    Delivery as Delivery,
)
from zocalo.transport.messages import (
    Outgoing as Outgoing,
)
from zocalo.transport.messages import (
    Subscription as Subscription,
)
from zocalo.transport.messages import (
    confirmed as confirmed,
)
from zocalo.transport.messages import (
    deliveries_to_ack as deliveries_to_ack,
)
from zocalo.transport.messages import (
    reserve_all_or_none as reserve_all_or_none,
)
from zocalo.transport.transactions import OpenTransactions

log = logging.getLogger(__name__)

#: Deliveries beyond this count move a message to ``dlq.<queue>``.
DEFAULT_DELIVERY_LIMIT = 5

#: How every reply queue's name begins (see :meth:`Transport.declare_reply_queue`).
REPLY_QUEUE_PREFIX = "zocalo.reply."


def reply_queue_name() -> str:
    """A fresh name for a reply queue: no other queue has it."""
    return f"{REPLY_QUEUE_PREFIX}{uuid.uuid4().hex}"


#: Headers by which a droppable message (a reply) names the recipe and step that sent it:
#: the log line of its drop carries them as ``recipe_ID`` and ``recipe_step``, as the
#: sender's own lines do (its log context does not reach the transport's threads).
SENDER_RECIPE_HEADER = "zocalo-sender-recipe"
SENDER_STEP_HEADER = "zocalo-sender-step"


def report_dropped(message: Outgoing, why: str) -> None:
    """The one log line for a droppable message a transport dropped (see
    :class:`Outgoing`), ``why`` being the broker's reason."""
    fields = {"recipe_ID": SENDER_RECIPE_HEADER, "recipe_step": SENDER_STEP_HEADER}
    sender = {
        field: message.headers[name] for field, name in fields.items() if name in message.headers
    }
    log.warning(
        "dropped a reply to %s: %s; nobody waits for it any more",
        message.describe(),
        why,
        extra=sender,
    )


def report_standing_by(subscription: Subscription, holder: str) -> None:
    """The one log line of a subscription that starts standing by (see ``exclusive``)."""
    log.info(
        "standing by on %s: %s holds it exclusively; this consumer takes over when it goes",
        subscription.describe(),
        holder,
    )


def report_taking_over(subscription: Subscription) -> None:
    """The one log line of a standby that now receives from its queue."""
    what = "holds it exclusively" if subscription.exclusive else "consumes it"
    log.info("took over %s: this consumer now %s", subscription.describe(), what)


#: The priorities every transport that orders by priority accepts (see Capability.PRIORITY).
LOWEST_PRIORITY, HIGHEST_PRIORITY = 0, 255

#: The longest delay, expiration or queue lifetime (seconds) any transport accepts:
#: 2**32 - 1 ms, about 49.7 days, the most a RabbitMQ delay carries. One limit for all,
#: so that a value one broker takes is not refused only after a move to another.
MAX_DURATION = (2**32 - 1) / 1000


def checked_duration(name: str, value: object, what: str, *, positive: bool = False) -> float:
    """``value`` as seconds, or UnsupportedFeature naming ``name`` and ``what`` it was for.

    A duration must be a real number (not a bool), finite, at least 0 (above 0 when
    ``positive``) and at most :data:`MAX_DURATION`: an infinite or huge number used
    to reach the broker code and fail there (one killed the SQLite broker's worker),
    and a negative one meant nothing anywhere.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        problem = "is not a number"
    elif not (value > 0 if positive else value >= 0) or value > MAX_DURATION:
        lowest = "above 0" if positive else "from 0"
        problem = f"is out of range ({lowest} to {MAX_DURATION:.0f} s, 49.7 days)"
    else:
        return float(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise UnsupportedFeature(f"{name}={shown} {problem}, for {what}")


class Capability(enum.Enum):
    """Optional features. A transport refuses what it lacks with UnsupportedFeature."""

    DELAY = "delay"
    #: Higher first; a whole number from LOWEST_PRIORITY to HIGHEST_PRIORITY (AMQP's
    #: octet), unset counting as the lowest. A broker may allow fewer (ActiveMQ: 0-9).
    PRIORITY = "priority"
    EXPIRATION = "expiration"
    DELIVERY_COUNT = "delivery-count"
    DEAD_LETTER = "dead-letter"
    CROSS_PROCESS = "cross-process"
    DELAYED_BROADCAST = "delayed-broadcast"
    #: ``declare_reply_queue``/``delete_reply_queue``, and droppable messages dropped when
    #: their queue is gone.
    REPLY_QUEUE = "reply-queue"
    #: ``keep_broadcasts`` and ``subscribe_broadcast(..., replay=)``.
    KEPT_BROADCASTS = "kept-broadcasts"
    #: ``Outgoing.exchange``: publish through a named (RabbitMQ) exchange.
    EXCHANGE = "exchange"
    #: ``subscribe(..., exclusive=True)``: one active consumer per queue.
    EXCLUSIVE = "exclusive"


@dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds, by state."""

    queue: str
    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    consumers: int = 0


class Transport(ABC):
    """Abstract broker connection. One subclass per broker in ``zocalo.transport``.

    Subclasses implement ``publish``, ``_ack`` and ``_nack`` (and the connection
    and subscription methods); ``ack``/``nack``/``send``/``broadcast`` and the
    transaction methods are built on those here, once for every broker.

    Transactions are python-workflows' API, emulated on the client (see
    :mod:`zocalo.transport.transactions`): ``ack``/``nack``/``send``/``broadcast``
    given ``transaction=`` only add to a buffer; ``transaction_commit`` is one
    atomic :meth:`publish` of the buffered messages acking every buffered input,
    and waits for it.
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
        self._id_lock = threading.Lock()
        self._transactions = OpenTransactions()
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
    def subscribe(
        self, queue: str, callback: Callback, *, prefetch: int = 1, exclusive: bool = False
    ) -> Subscription:
        """Consume ``queue`` with at most ``prefetch`` unacknowledged deliveries.

        ``exclusive``: one active consumer per queue (python-zocalo's JSONLines). The
        first exclusive subscription *holds* the queue and alone receives from it; any
        other subscription to it, exclusive or not, *stands by*: it is accepted at
        once, receives nothing, and takes over when the holder goes (closed, crashed,
        its network lost, or unsubscribed: on some brokers only once it has settled
        what it still holds); what the holder left unacknowledged is redelivered.
        A standby says so in one log line when it starts standing by and one when it
        takes over (:func:`report_standing_by`, :func:`report_taking_over`; ActiveMQ
        does not tell a client it stands by: there the subscription says it may).
        An exclusive subscription to a queue that plain consumers read already stands
        by until they have all gone (RabbitMQ's rule), except on ActiveMQ, whose
        broker hands the queue to the exclusive consumer at once (the others keep only
        what they hold). Standing by is never an error and never a restart.
        Transports without :attr:`Capability.EXCLUSIVE` refuse ``exclusive``.
        """

    @abstractmethod
    def subscribe_broadcast(
        self, topic: str, callback: Callback, *, replay: float = 0.0
    ) -> Subscription:
        """Receive copies of messages broadcast to ``topic`` from now on.

        With ``replay`` (seconds), first those broadcast in the last ``replay``
        seconds that the broker kept (see :meth:`keep_broadcasts`; subscribing so
        keeps the topic for ``replay`` seconds too) and that have not expired,
        oldest first, then the new ones: what was said while the subscriber was
        not listening (a service restarted, or started later) still reaches it.
        After a reconnect the replay starts again, and RabbitMQ cannot date what
        other clients broadcast (it may hand over older ones of theirs): read it
        as a record to catch up from, whose messages say when they were made if
        that matters.
        """

    def keep_broadcasts(self, topic: str, *, seconds: float) -> None:
        """Have the broker keep each message broadcast to ``topic`` from now on for
        ``seconds``, for subscribers that ask for the past (``replay``).

        Both sides call it, so that it holds whichever comes first: the first
        broadcast of a topic nobody has subscribed to yet is kept too. Keeping
        again is harmless; a topic a broker already keeps for another length
        keeps its length (RabbitMQ cannot change a stream's ``x-max-age``).
        Transports with :attr:`Capability.KEPT_BROADCASTS` implement this and
        ``replay``; the others refuse both.
        """
        raise UnsupportedFeature(f"{type(self).__name__} cannot keep broadcasts")

    def declare_reply_queue(self, queue: str) -> str:
        """Create ``queue`` for replies to come back on, private to this connection, and
        return its *address*: the name replies are sent to (put that in the job).

        It goes away, with what it holds, when this connection closes or dies (its
        caller has gone), or :meth:`delete_reply_queue` deletes it; a droppable message
        sent to it after that (see :class:`Outgoing`) is dropped, and the publish that
        carried it goes through.
        Consume it with :meth:`subscribe` under ``queue``. Declaring this connection's
        own reply queue again is harmless (the same address).

        Most brokers take the caller's name: the address is ``queue``, which must be
        new (:func:`reply_queue_name` makes one): a queue that already exists is
        refused with :class:`~zocalo.errors.TransportError`, as closing this connection
        would take it away. ActiveMQ names its temporary queues itself: there the
        address differs, every connection's are its own, and no name is refused.

        Transports with :attr:`Capability.REPLY_QUEUE` implement this; the others
        refuse it (so ``zocalo.go --wait`` says it cannot wait there), and deliver a
        droppable message as any other.
        """
        raise UnsupportedFeature(f"{type(self).__name__} cannot make a reply queue")

    def delete_reply_queue(self, queue: str) -> None:
        """Delete this connection's reply queue ``queue`` (the name it was declared under),
        with what it holds, now rather than when the connection goes: a caller that keeps
        one connection all day and waits on many jobs leaves no queues behind.

        A droppable message sent to its address after that is dropped, as after the
        connection went. Unsubscribe its consumer first.
        Deleting a queue this connection has not declared (or deleted already) does
        nothing. Transports with :attr:`Capability.REPLY_QUEUE` implement this.
        """
        raise UnsupportedFeature(f"{type(self).__name__} cannot delete a reply queue")

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

    def hand_over(self, subscription: Subscription, delivery: Delivery) -> None:
        """Run ``subscription``'s callback on ``delivery``; a callback that raises
        is logged with its traceback (it is a bug: the runner's own callback never
        raises) and its message goes back on the queue (never a dead thread).

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
        self._transactions.hold_ack(transaction, delivery)

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
        self._transactions.hold_nack(transaction, delivery, requeue, reason)

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
    def transaction_begin(self, subscription_id: int | Subscription | None = None) -> int:
        """Open a transaction; returns its id (1, 2, ... per connection).

        Sends, broadcasts, acks and nacks given ``transaction=`` this id are
        held until :meth:`transaction_commit`. ``subscription_id`` is accepted
        for compatibility with python-workflows (where it picks the AMQP
        channel to put in tx mode); here a transaction may settle deliveries
        of any subscription of this connection.
        """
        del subscription_id  # accepted, not needed: see above
        return self._transactions.begin()

    def transaction_add(self, transaction_id: int, *messages: Outgoing) -> None:
        """Hold ``messages`` in a transaction, to publish on commit.

        Features this transport lacks are refused now, not at commit.
        """
        for message in messages:
            self.check_supported(message)
        self._transactions.add(transaction_id, messages)

    def transaction_commit(self, transaction_id: int, *, timeout: float | None = 30.0) -> None:
        """Publish everything the transaction holds and ack its inputs, atomically.

        One :meth:`publish` of the held messages with every held ack; returns
        once the broker confirmed it, then applies held nacks. On failure raises
        :class:`~zocalo.errors.PublishFailed` naming the destination: no input
        of the transaction was acked (they are redelivered once this connection
        lets go of them, or can be nacked). The transaction is over either way.
        """
        self._transactions.end(transaction_id).commit(self.publish, self._nack, timeout)

    def transaction_abort(self, transaction_id: int) -> None:
        """Drop everything the transaction holds: nothing is published, acked or nacked.

        Deliveries acked in it stay unsettled, as after python-workflows'
        ``tx.rollback``: they return to their queue when this connection lets
        go of them (close, crash), or at once if the caller nacks them.
        """
        self._transactions.end(transaction_id)

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
        if (
            message.delay is None
            and message.priority is None
            and message.expiration is None
            and not message.exchange
        ):
            return  # no feature asked for (most messages): nothing to refuse or check
        wanted = {
            Capability.DELAY: message.delay,
            Capability.PRIORITY: message.priority,
            Capability.EXPIRATION: message.expiration,
            Capability.EXCHANGE: message.exchange or None,
        }
        if message.broadcast and message.delay is not None:
            wanted[Capability.DELAYED_BROADCAST] = message.delay
        for capability, value in wanted.items():
            if value is not None and capability not in self.capabilities:
                raise UnsupportedFeature(
                    f"{type(self).__name__} cannot honour {capability.value}={value!r} "
                    f"for {message.describe()}"
                )
        if message.delay is not None:
            checked_duration("delay", message.delay, message.describe())
        if message.expiration is not None:
            checked_duration("expiration", message.expiration, message.describe())
        if message.exchange and (message.broadcast or message.delay is not None):
            raise UnsupportedFeature(
                f"{message.describe()}: a broadcast or a delayed message goes through its "
                "own exchange, not a named one"
            )
        priority = message.priority
        if priority is not None and (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not LOWEST_PRIORITY <= priority <= HIGHEST_PRIORITY
        ):
            raise UnsupportedFeature(
                f"priority must be a whole number from {LOWEST_PRIORITY} to "
                f"{HIGHEST_PRIORITY}, not {priority!r}, for {message.describe()}"
            )

    def _next_subscription_id(self) -> int:
        with self._id_lock:
            self._subscription_ids += 1
            return self._subscription_ids


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body
