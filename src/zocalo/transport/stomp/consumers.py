"""Consuming: STOMP subscriptions, what each holds unsettled, and the callback thread.

A queue subscription acknowledges each message on its own
(``client-individual``), its prefetch is ActiveMQ's ``activemq.prefetchSize``,
and every delivery carries its ``ack`` id in its receipt. An ack or nack first
*takes* that id from the consumer's unsettled ones (a second settlement is
refused in one line, never sent), and a failed publish gives it back.

ActiveMQ Classic counts deliveries (``JMSXDeliveryCount``) but tells a STOMP
client only ``redelivered``, so the delivery limit that catches a message
killing its consumers is a selector: a queue subscription takes messages
delivered at most ``delivery_limit`` times, and a *reaper* subscription on the
same queue (one per queue and connection, kept until the connection closes)
takes the others, to be dead-lettered. A message we return with a nack travels
as a new copy that carries how often it was delivered
(:data:`~zocalo.transport.stomp.headers.DELIVERIES_HEADER`): past the limit it
is dead-lettered on arrival.

RabbitMQ's quorum queues count deliveries themselves (``x-delivery-count``, a
crashed consumer's included): there a queue subscription has no selector and no
reaper, and a delivery past the limit is dead-lettered on arrival. RabbitMQ keeps
what it sent a subscription until the connection closes, even once unsubscribed:
what a leaving consumer is sent is NACKed back at once (see :mod:`.flavour`).

A dead-letter queue has no delivery limit (no selector, no reaper): a tool that
hands its dead letters back may do so as often as it likes.

Unsubscribing at the broker returns every unacknowledged message, so a
subscription that still has deliveries out keeps consuming at the broker (what
arrives meanwhile is not handed out, and returns) until the last of them is
settled; only then is it unsubscribed.

Deliveries arrive on stomp.py's receiver thread and are handed to one callback
thread, in order, so a slow handler never stalls receipts or heart-beats.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from stomp.utils import Frame

from zocalo.errors import TransportError
from zocalo.transport.base import Delivery, Subscription, report_taking_over
from zocalo.transport.stomp.connection import Link
from zocalo.transport.stomp.flavour import ActiveMQ, Flavour
from zocalo.transport.stomp.headers import (
    MESSAGE_ID_HEADER,
    deliveries_before,
    received,
)
from zocalo.transport.stomp.topology import Destinations
from zocalo.transport.stomp.url import Endpoint

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Consumer:
    """One STOMP subscription: of a queue, a topic, or a queue's reaper."""

    subscription: Subscription
    stomp_id: str
    destination: str
    headers: dict[str, str]
    link: Link
    reaper: bool = False
    #: Under the delivery limit (a queue's, not a dead-letter queue's).
    limited: bool = False
    #: ack ids handed out and not yet settled.
    unsettled: set[str] = field(default_factory=set)
    #: ack ids taken for a settlement whose frame is not yet written.
    taken: set[str] = field(default_factory=set)
    #: Unsubscribed: unsubscribe at the broker once nothing is unsettled.
    leaving: bool = False
    #: Has had a delivery since it (re)subscribed: an exclusive one then holds the queue.
    receiving: bool = False

    def idle(self) -> bool:
        return not self.unsettled and not self.taken


@dataclass(frozen=True)
class Receipt:
    """What settling a delivery needs: its consumer, ``ack`` id and connection, and
    the frame's headers as they arrived (a copy of the message is made from them,
    whatever the callback did to the delivery's own)."""

    consumer: Consumer
    ack: str
    generation: int
    frame: dict[str, str]


#: What the callback thread does with a delivery: hand it over, or dead-letter it (why).
Action = Callable[[Consumer, Delivery], None]


class Consumers:
    """Every subscription's consumer, the reapers, and the thread that runs callbacks.

    ``hand_over(subscription, delivery)`` runs a callback;
    ``dead_letter(delivery, reason)`` moves a delivery to its dead-letter queue.
    """

    def __init__(
        self,
        destinations: Destinations,
        delivery_limit: int,
        hand_over: Callable[[Subscription, Delivery], None],
        dead_letter: Callable[[Delivery, str], None],
    ) -> None:
        self._destinations = destinations
        self._limit = delivery_limit
        self._hand_over = hand_over
        self._dead_letter = dead_letter
        #: The broker's flavour, known once connected (see :mod:`.flavour`).
        self.flavour: Flavour = ActiveMQ()
        self._consumers: dict[str, Consumer] = {}
        self._reapers: dict[tuple[int, str], Consumer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._callbacks: queue.SimpleQueue[tuple[Consumer, Delivery, str | None] | None] = (
            queue.SimpleQueue()
        )
        self._dispatcher: threading.Thread | None = None

    # -- the callback thread ----------------------------------------------------
    def start_callbacks(self) -> None:
        if self._dispatcher is not None and self._dispatcher.is_alive():
            return
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="stomp-callbacks", daemon=True
        )
        self._dispatcher.start()

    def stop_callbacks(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.is_alive():
            self._callbacks.put(None)
            if dispatcher is not threading.current_thread():
                dispatcher.join(10)

    def _dispatch(self) -> None:
        while (item := self._callbacks.get()) is not None:
            consumer, delivery, dead = item
            if dead is not None:
                self._dead_letter(delivery, dead)
            else:  # also after an unsubscribe, as every transport: the callback settles it
                self._hand_over(consumer.subscription, delivery)

    # -- subscribing ---------------------------------------------------------------
    def queue_headers(self, destination: str, prefetch: int, *, limited: bool) -> dict[str, str]:
        """A queue subscription's headers; ``limited``: with the delivery limit (on
        ActiveMQ a selector, which makes :meth:`consume` add the queue's reaper)."""
        headers = {
            "ack": "client-individual",
            **self.flavour.prefetch(prefetch),
            **self.flavour.queue_arguments(destination),
        }
        if limited and self.flavour.selects_by_delivery_count:
            headers["selector"] = f"JMSXDeliveryCount <= {self._limit}"
        return headers

    def consume(
        self,
        subscription: Subscription,
        destination: str,
        headers: dict[str, str],
        link: Link,
        *,
        limited: bool = False,
    ) -> Subscription:
        """Subscribe at the broker and wait for its receipt; ``limited``: deliveries past
        the delivery limit are dead-lettered (and taken by a reaper where a selector
        keeps them from the subscription)."""
        consumer = Consumer(
            subscription, str(next(self._ids)), destination, headers, link, limited=limited
        )
        self._start(consumer)
        if limited and "selector" in headers:
            self._reaper(subscription.destination, destination, link)
        return subscription

    def _reaper(self, name: str, destination: str, link: Link) -> None:
        """The queue's reaper on ``link``: takes what was delivered too often."""
        key = (id(link), destination)
        with self._lock:
            if key in self._reapers:
                return
        reaper = Consumer(
            Subscription(0, name, lambda delivery: None),
            f"reaper-{next(self._ids)}",
            destination,
            {"ack": "client-individual", "selector": f"JMSXDeliveryCount > {self._limit}"},
            link,
            reaper=True,
        )
        with self._lock:
            self._reapers[key] = reaper
        try:
            self._start(reaper)
        except BaseException:
            with self._lock:
                self._reapers.pop(key, None)
            raise

    def _start(self, consumer: Consumer) -> None:
        # Known before the SUBSCRIBE: its first messages may come before the receipt.
        with self._lock:
            self._consumers[consumer.stomp_id] = consumer
        try:
            consumer.link.call(
                "SUBSCRIBE",
                {"id": consumer.stomp_id, "destination": consumer.destination, **consumer.headers},
            )
        except BaseException:
            with self._lock:
                self._consumers.pop(consumer.stomp_id, None)
            raise

    def restore(self, link: Link) -> int:
        """After a reconnect of ``link``: subscribe its active consumers again; how many."""
        with self._lock:
            consumers = [
                c
                for c in self._consumers.values()
                if c.link is link and c.subscription.active and not c.leaving
            ]
        for consumer in consumers:
            consumer.link.call(
                "SUBSCRIBE",
                {"id": consumer.stomp_id, "destination": consumer.destination, **consumer.headers},
            )
        return sum(1 for consumer in consumers if not consumer.reaper)

    def connection_lost(self, link: Link) -> None:
        """What ``link`` held unsettled, the broker takes back; what was leaving is gone."""
        with self._lock:
            for stomp_id, consumer in list(self._consumers.items()):
                if consumer.link is not link:
                    continue
                consumer.unsettled.clear()
                consumer.taken.clear()
                consumer.receiving = False
                if consumer.leaving:
                    del self._consumers[stomp_id]

    def forget(self, link: Link) -> None:
        """``link`` closed for good: its consumers and reapers go."""
        with self._lock:
            for stomp_id, consumer in list(self._consumers.items()):
                if consumer.link is link:
                    consumer.subscription.active = False
                    del self._consumers[stomp_id]
            for key in [key for key, reaper in self._reapers.items() if reaper.link is link]:
                del self._reapers[key]

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop handing out ``subscription``'s deliveries; each of its consumers is
        unsubscribed at the broker once nothing it handed out is unsettled."""
        with self._lock:
            consumers = [
                c
                for c in self._consumers.values()
                if c.subscription is subscription and not c.leaving
            ]
        if not consumers or not subscription.active:
            raise TransportError(f"{subscription.describe()} is not subscribed")
        for consumer in consumers:
            consumer.link.require_open()
        subscription.active = False
        now: list[Consumer] = []
        with self._lock:
            for consumer in consumers:
                consumer.leaving = True
                if consumer.idle() and self._consumers.pop(consumer.stomp_id, None) is consumer:
                    now.append(consumer)
        for consumer in now:
            consumer.link.call("UNSUBSCRIBE", {"id": consumer.stomp_id})

    def _leave(self, consumer: Consumer) -> None:
        """Unsubscribe at the broker (the consumer is already forgotten here): what it
        still holds for us returns to the queue."""
        try:
            consumer.link.write([("UNSUBSCRIBE", {"id": consumer.stomp_id}, b"")])
        except TransportError as error:
            log.debug("unsubscribing %s: %s", consumer.subscription.describe(), error)

    # -- deliveries ------------------------------------------------------------------
    def on_message(self, frame: Frame, link: Link) -> None:
        """On the receiver thread: a MESSAGE frame becomes a delivery for the callbacks."""
        raw = frame.headers
        with self._lock:
            consumer = self._consumers.get(raw.get("subscription", ""))
            if consumer is None or consumer.leaving or consumer.link is not link:
                unwanted = raw.get("ack")  # none for a broadcast (acked by the broker)
                if (
                    unwanted is not None
                    and consumer is not None  # still subscribed: RabbitMQ takes a NACK
                    and consumer.link is link
                    and not self.flavour.unsubscribe_returns
                ):
                    # Under the lock: written before the UNSUBSCRIBE that settled() may
                    # send once it finds the consumer idle (after it, RabbitMQ refuses it).
                    self._give_back(unwanted, link)
                return  # not handed out: returned to its queue when it is unsubscribed
            ackable = not consumer.subscription.broadcast
            ack = raw.get("ack", "")
            if ackable:
                consumer.unsettled.add(ack)
            first, consumer.receiving = not consumer.receiving, True
        if first and consumer.subscription.exclusive:
            report_taking_over(consumer.subscription)  # ActiveMQ says nothing else
        headers = received(raw, self._destinations.queue_name)
        count = self.flavour.deliveries(raw, deliveries_before(raw))
        delivery = Delivery(
            subscription=consumer.subscription,
            message_id=raw.get(MESSAGE_ID_HEADER) or raw.get("message-id", ""),
            body=frame.body if isinstance(frame.body, bytes) else frame.body.encode(),
            headers=headers,
            delivery_count=count,
            redelivered=count > 1,
            ackable=ackable,
            receipt=(Receipt(consumer, ack, link.generation, dict(raw)) if ackable else None),
        )
        dead = None
        if consumer.reaper:
            dead = f"delivered more than {self._limit} times (its consumers never settled it)"
        elif ackable and consumer.limited and count > self._limit:
            dead = f"delivered {count} times or more (limit {self._limit})"
        self._callbacks.put((consumer, delivery, dead))

    @staticmethod
    def _give_back(ack: str, link: Link) -> None:
        """Return a message no consumer of ours takes (see ``unsubscribe_returns``)."""
        try:
            link.write([("NACK", {"id": ack, "requeue": "true"}, b"")])
        except TransportError as error:
            log.debug("returning an unwanted message: %s", error)

    def take(self, delivery: Delivery) -> Receipt:
        """Mark ``delivery`` as being settled, or raise if it is not awaiting settlement."""
        receipt = delivery.receipt if delivery.ackable else None
        if not isinstance(receipt, Receipt):
            raise TransportError(f"{delivery.describe()} cannot be acknowledged")
        consumer = receipt.consumer
        consumer.link.require_open()
        with self._lock:
            if (
                self._consumers.get(consumer.stomp_id) is not consumer
                or receipt.generation != consumer.link.generation
                or receipt.ack not in consumer.unsettled
            ):
                raise TransportError(
                    f"{delivery.describe()} is not awaiting acknowledgement "
                    "(already settled, or its connection closed)"
                )
            consumer.unsettled.discard(receipt.ack)
            consumer.taken.add(receipt.ack)
        return receipt

    def untake(self, delivery: Delivery) -> None:
        """Undo :meth:`take`: ``delivery`` awaits settlement again, if its connection lives."""
        receipt = delivery.receipt
        assert isinstance(receipt, Receipt)
        consumer = receipt.consumer
        with self._lock:
            if receipt.ack in consumer.taken:
                consumer.taken.discard(receipt.ack)
                if receipt.generation == consumer.link.generation:
                    consumer.unsettled.add(receipt.ack)

    def settled(self, receipts: list[Receipt]) -> None:
        """The settlement frames of ``receipts`` are written: a leaving consumer that
        has nothing left out is unsubscribed at the broker now."""
        leaving: list[Consumer] = []
        with self._lock:
            for receipt in receipts:
                consumer = receipt.consumer
                consumer.taken.discard(receipt.ack)
                if (
                    consumer.leaving
                    and consumer.idle()
                    and self._consumers.get(consumer.stomp_id) is consumer
                ):
                    del self._consumers[consumer.stomp_id]
                    leaving.append(consumer)
        for consumer in leaving:
            self._leave(consumer)


def declare(
    endpoint: Endpoint,
    flavour: Flavour,
    destination: str,
    headers: dict[str, str] | None = None,
    leaving: dict[str, str] | None = None,
) -> None:
    """Have RabbitMQ declare what a SUBSCRIBE to ``destination`` names (with
    ``headers``), on a connection of its own: closing it returns whatever it was sent.
    With ``leaving``, it UNSUBSCRIBEs first, with those headers."""
    link = Link(endpoint, on_message=lambda frame: None, reconnect=False)
    link.connect()
    try:
        link.call(
            "SUBSCRIBE",
            {
                "id": "declare",
                "destination": destination,
                "ack": "client-individual",
                **flavour.prefetch(1),
                **flavour.queue_arguments(destination),
                **(headers or {}),
            },
        )
        if leaving is not None:
            link.call("UNSUBSCRIBE", {"id": "declare", **leaving})
    finally:
        link.close()
