"""The values that cross the transport contract: messages out, deliveries in.

They live apart from :mod:`zocalo.transport.base` (which re-exports them) so
the client-side transactions of :mod:`zocalo.transport.transactions` can hold
them without importing the contract that uses those transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from zocalo.errors import TransportError


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: to a queue, or broadcast to a topic.

    ``droppable`` marks a message that may go only to a queue that exists now (a
    reply to a caller who may have gone: ``RecipeStep.reply``). If its queue does
    not exist, or the broker refuses it, the transport drops it with one log line
    and the rest of the publish, and the acks it carries, go through as if it had
    been delivered: a reply never blocks, fails or repeats the step that sent it.
    (A broadcast is never refused for want of listeners: the flag changes nothing there.)

    ``exchange`` names a RabbitMQ exchange to publish through, ``destination`` then
    being the routing key (not necessarily a queue): the message reaches whatever
    queues the exchange routes that key to, and is refused if none. Only transports
    with ``Capability.EXCHANGE`` honour it (others refuse it); ``""`` and None mean the
    default exchange, which routes the key to the queue of that name: a plain send,
    which every transport does. It exists to resend a message the way it first came
    (``zocalo.dlq_reinject``); a broadcast goes through its topic's own exchange.
    """

    destination: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    broadcast: bool = False
    delay: float | None = None
    priority: int | None = None
    expiration: float | None = None
    droppable: bool = False
    exchange: str | None = None

    def describe(self) -> str:
        if self.exchange:
            return f"exchange {self.exchange!r} with routing key {self.destination!r}"
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
    #: Seconds of kept broadcasts handed over first (``subscribe_broadcast(replay=)``).
    replay: float = 0.0
    #: One active consumer per queue (``subscribe(exclusive=True)``): see Transport.subscribe.
    exclusive: bool = False

    def describe(self) -> str:
        kind = "topic" if self.broadcast else "queue"
        return f"{kind} {self.destination!r}"


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


def reserve_all_or_none(
    deliveries: Sequence[Delivery],
    reserve: Callable[[Delivery], Any],
    release: Callable[[Delivery], Any],
) -> None:
    """Reserve every delivery a publish will ack, or none of them.

    ``reserve`` marks one delivery as settled by this publish (so nothing else
    settles it meanwhile) or raises :class:`TransportError`; on that refusal the
    deliveries reserved so far are released (they are still the caller's to
    settle) and the error is raised again.
    """
    reserved: list[Delivery] = []
    try:
        for delivery in deliveries:
            reserve(delivery)
            reserved.append(delivery)
    except TransportError:
        for delivery in reserved:
            release(delivery)
        raise
