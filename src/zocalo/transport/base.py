"""The one transport contract every broker implements.

A transport is one connection to a broker. It moves opaque byte bodies with
headers; it knows nothing of recipes. Callbacks run on a thread the transport
owns, so they must be quick (the service runner only enqueues deliveries).

The central primitive is :meth:`Transport.publish`: publish a batch of
outgoing messages and, once the broker has accepted *all* of them, acknowledge
the input that produced them. It returns a :class:`Confirmation` (a future)
so the caller can keep working while the broker confirms.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from zocalo.errors import UnsupportedFeature

#: Deliveries beyond this count move a message to ``dlq.<queue>``.
DEFAULT_DELIVERY_LIMIT = 5

#: Header names a transport sets when it dead-letters a message.
DLQ_REASON_HEADER = "zocalo-dlq-reason"
DLQ_QUEUE_HEADER = "zocalo-dlq-queue"
DLQ_HISTORY_HEADER = "zocalo-dlq-history"


def dlq_name(queue: str) -> str:
    """The dead-letter queue of ``queue`` (``dlq.<queue>``, as DLS configures RabbitMQ)."""
    return queue if queue.startswith("dlq.") else f"dlq.{queue}"


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
    #: Opaque per-transport data (delivery tag, row id, ...).
    token: Any = None

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


class Transport(ABC):
    """Abstract broker connection. One subclass per broker in ``zocalo.transport``."""

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

    @abstractmethod
    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop deliveries; unacknowledged ones stay owed until acked/nacked or closed."""

    @abstractmethod
    def ack(self, delivery: Delivery) -> None: ...

    @abstractmethod
    def nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        """Return a delivery: to its queue (``requeue``) or to ``dlq.<queue>`` with ``reason``."""

    # -- publishing ---------------------------------------------------------
    @abstractmethod
    def publish(self, messages: Sequence[Outgoing], *, ack: Delivery | None = None) -> Confirmation:
        """Publish ``messages``; once all are accepted, ack ``ack``. Atomic per call.

        Returns at once; the confirmation completes when the broker accepted
        everything. If anything fails, no input is acked.
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
    ) -> None:
        """Send one message to a queue and wait until the broker accepted it."""
        message = Outgoing(
            queue, _as_bytes(body), dict(headers or {}), False, delay, priority, expiration
        )
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
    ) -> None:
        """Broadcast one message to every current subscriber of ``topic``."""
        message = Outgoing(
            topic, _as_bytes(body), dict(headers or {}), True, delay, None, expiration
        )
        self.publish([message]).result(timeout)

    # -- introspection ------------------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        """Every queue that holds messages, with counts by state."""
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
