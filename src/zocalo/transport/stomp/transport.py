"""ActiveMQ over STOMP: ``stomp://user:pass@host:61613?prefix=zocalo``.

RabbitMQ's STOMP plugin works too (``?vhost=/``), with fewer capabilities: the
CONNECTED frame names the broker, and :mod:`.flavour` holds every difference.

One STOMP connection (stomp.py) per transport object. On ActiveMQ the messages
of publishes that come together go in one STOMP transaction whose COMMIT asks
for a receipt, and the inputs of a publish are acked only once that receipt is
in (on RabbitMQ's plugin every SEND is receipted instead, see :mod:`.flavour`):
publish and ack are pipelined, nothing waits a round trip per message.
Callbacks run on one thread of their own, in order.

On the wire it matches python-workflows' ``StompTransport``: destinations
``/queue/<prefix>.<name>`` and ``/topic/<prefix>.<name>``, persistent queue
messages, string headers (other values as JSON, see :mod:`.headers`),
``AMQ_SCHEDULED_DELAY`` for delays, absolute ``expires``, JMS priorities,
status on ``/topic/<prefix>.transient.status`` and commands on
``/topic/<prefix>.command``.

ActiveMQ turns a STOMP NACK into a dead letter, so returning a message to its
queue is a copy: the copy (carrying the message id and how often it was
delivered) is published, receipted, and only then the original acked. A copy
goes to the back of its queue. Dead letters go to ``DLQ.<prefix>.<queue>``
(our ``dlq.<queue>``), with our reason headers; if that copy fails, the
original is NACKed, for the broker's own dead-letter policy.

This class is the contract's face and the wiring; each concern has a module
beside it: :mod:`.flavour` (which broker, what it honours), :mod:`.url` (URL ->
endpoint), :mod:`.connection` (the
connection, frames, receipts, reconnect), :mod:`.topology` (destinations
and routing headers), :mod:`.headers` (header values and names),
:mod:`.consumers` (subscriptions, unsettled deliveries, the delivery limit,
the callback thread) and :mod:`.confirms` (receipted batches and their acks).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future

from stomp.utils import Frame

from zocalo.errors import ConnectionFailed, PublishFailed, TransportError, UnsupportedFeature
from zocalo.transport.base import (
    Acks,
    Callback,
    Confirmation,
    Delivery,
    Outgoing,
    QueueStats,
    Subscription,
    Transport,
    checked_duration,
    deliveries_to_ack,
    dlq_name,
    reserve_all_or_none,
)
from zocalo.transport.dead_letters import (
    dead_letter_headers,
    delivery_entry,
    delivery_limit_reason,
    with_history,
)
from zocalo.transport.stomp.bound import BoundQueues, TopicQueues
from zocalo.transport.stomp.browse import Browsers
from zocalo.transport.stomp.confirms import Batch, Prepared, Publisher
from zocalo.transport.stomp.connection import Link
from zocalo.transport.stomp.consumers import Consumers, Receipt, declare
from zocalo.transport.stomp.flavour import DEAD_LETTER_NACK, ActiveMQ, Flavour, flavour_of
from zocalo.transport.stomp.headers import (
    DELIVERIES_HEADER,
    MESSAGE_ID_HEADER,
    Uncarriable,
    copied,
    received,
    to_stomp,
)
from zocalo.transport.stomp.reply_queues import ReplyQueues
from zocalo.transport.stomp.topology import DEAD_LETTER_QUEUES, Destinations, routing_headers
from zocalo.transport.stomp.url import endpoint

__all__ = ["StompTransport"]

log = logging.getLogger(__name__)


class StompTransport(Transport):
    """A connection to an ActiveMQ Classic broker over STOMP 1.2."""

    schemes = ("stomp",)
    serial_callbacks = True
    #: ActiveMQ's until connected; then the broker's (see :mod:`.flavour`).
    capabilities = ActiveMQ.capabilities

    def __init__(self, url: str, *, delivery_limit: int | None = None) -> None:
        self.endpoint, options = endpoint(url, {"delivery_limit": delivery_limit})
        super().__init__(url, delivery_limit=options["delivery_limit"])
        self.safe_url = self.endpoint.safe_url
        self.destinations = Destinations(self.endpoint.prefix)
        self._consumers = Consumers(
            self.destinations,
            self.delivery_limit,
            hand_over=lambda subscription, delivery: self.hand_over(subscription, delivery),
            dead_letter=lambda delivery, reason: self._dead_letter(delivery, reason),
        )
        self._link: Link = Link(
            self.endpoint,
            on_message=self._on_message,
            on_error=lambda text: self._publisher.refused(text),
            on_lost=lambda reason: self._consumers.connection_lost(self._link),
            on_reconnected=lambda: self._consumers.restore(self._link),
        )
        #: The broker's flavour (:mod:`.flavour`): ActiveMQ's until connected.
        self.flavour: Flavour = ActiveMQ()
        self._publisher = Publisher(self._link, self._consumers, lambda: self.flavour)
        self._bound = BoundQueues(self.endpoint, self.destinations, self._consumers)
        self._browsers = Browsers()
        #: Rejected messages whose copy to the dead-letter queue failed: NACKed instead,
        #: for the broker's own dead-letter policy (each is logged too).
        self.dead_letter_copies_failed = 0
        #: The queues declared (on RabbitMQ, see :meth:`declare_queue`).
        self._declared: set[str] = set()
        self._reply_queues = ReplyQueues(
            self.endpoint, self.destinations, self._consumers, self._reply_queue_lost
        )

    def _reply_queue_lost(self, queue: str) -> None:
        """A reply queue's connection was lost: ActiveMQ deleted the queue with it;
        whoever waits on it is told (replies now go nowhere)."""
        self.report_failure(
            f"{self.safe_url}: the connection of reply queue {queue} was lost, and ActiveMQ "
            "deleted the queue with it: replies sent to it are dropped"
        )

    def _on_message(self, frame: Frame) -> None:
        if not self._browsers.on_message(frame):
            self._consumers.on_message(frame, self._link)

    # -- connection ---------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Open, and after a reconnect with every subscription consuming again."""
        return self._link.connected

    def connect(self) -> None:
        if self._link.is_open:
            return
        self._link.connect()
        self.flavour = flavour_of(self._link.server, DEAD_LETTER_QUEUES)
        self._consumers.flavour = self.flavour
        #: What this broker honours (see :mod:`.flavour`): known once connected.
        self.capabilities = self.flavour.capabilities
        if not self.flavour.durable_subscriptions:
            self._bound = TopicQueues(self.endpoint, self.destinations, self._consumers)
        self._consumers.start_callbacks()

    def close(self) -> None:
        """Close: what is being confirmed is finished first (its acks go out, also on the
        connections of bound and reply queues, which therefore close after it), then the
        broker returns unacknowledged deliveries to their queues.

        Called where the broker's answers are read (a confirmation's callback), it
        returns at once and the closing goes on, on a thread of its own, once that
        thread is free: waiting there, no receipt could come (each wait ran its whole
        timeout, 25 s in all).
        """
        if self._link.on_receiver_thread():
            threading.Thread(target=self._close, name="stomp-close", daemon=True).start()
            return
        self._close()

    def _close(self) -> None:
        if self._link.is_open:
            self._link.wait_for_receipts(self.endpoint.timeout)
        self._bound.close()
        self._reply_queues.close()
        self._link.close(drain=self.endpoint.timeout)
        self._consumers.forget(self._link)
        self._consumers.stop_callbacks()

    def abort(self) -> None:
        """As a killed process would leave: the socket closes, nothing more is said."""
        self._bound.close(abort=True)
        self._reply_queues.close(abort=True)
        self._link.abort()
        self._consumers.forget(self._link)
        self._consumers.stop_callbacks()

    # -- consuming ----------------------------------------------------------
    def declare_queue(self, queue: str) -> None:
        """ActiveMQ creates a queue on first use: only the name is checked. RabbitMQ's
        SENDs and SUBSCRIBEs declare it too, but a queue another connection uses while
        one creates it can close that connection (RabbitMQ 3.10, quorum queues): so it
        is declared here, once per transport, and usable on return."""
        destination = self.destinations.queue(queue)
        if self.flavour.declares_on_first_use or destination in self._declared:
            return
        self._link.require_open()
        declare(self.endpoint, self.flavour, destination)
        self._declared.add(destination)

    def subscribe(
        self, queue: str, callback: Callback, *, prefetch: int = 1, exclusive: bool = False
    ) -> Subscription:
        """An exclusive subscription is an ActiveMQ exclusive consumer
        (``activemq.exclusive``, as python-workflows subscribes): the broker lets one
        receive at a time and hands the queue to another when it goes. It does not tell
        a consumer that it stands by: the subscription says it may, and its first
        delivery says it took over.

        Known gap: beside an exclusive consumer ActiveMQ hands nothing to the queue's
        reaper (see :mod:`.consumers`), so a message delivered more often than the
        delivery limit stays in the queue (counted there, never lost) instead of
        going to its dead-letter queue."""
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self._link.require_open()
        if exclusive and self.flavour.refuses_exclusive:
            raise UnsupportedFeature(self.flavour.refuses_exclusive)
        temporary = self._reply_queues.get(queue)
        destination = temporary.destination if temporary else self.destinations.queue(queue)
        link = temporary.link if temporary else self._link
        subscription = Subscription(
            self._next_subscription_id(), queue, callback, prefetch=prefetch, exclusive=exclusive
        )
        # A dead-letter queue has no limit of its own; a reply queue dead-letters nothing.
        limited = not temporary and queue != dlq_name(queue)
        headers = self._consumers.queue_headers(destination, prefetch, limited=limited)
        if exclusive:
            headers["activemq.exclusive"] = "true"
            log.info(
                "consuming %s exclusively: ActiveMQ lets one exclusive consumer receive at "
                "a time; until it takes over, this one stands by",
                subscription.describe(),
            )
        self._consumers.consume(subscription, destination, headers, link, limited=limited)
        binding = self._bound.bound(queue)
        if binding is not None:
            try:
                self._bound.consume(binding, subscription)
            except BaseException:
                self._consumers.unsubscribe(subscription)
                raise
        return subscription

    def declare_reply_queue(self, queue: str) -> str:
        """A temporary queue on a connection of its own (see :mod:`.reply_queues`),
        deleted by the broker when this transport closes or dies, or the queue is
        deleted. Returns its address, the name others send replies to
        (``zocalo.reply.<ActiveMQ's id>``); ``queue`` is the caller's name for
        consuming it. Each connection's are its own: no name clashes.
        """
        self._link.require_open()
        if self.flavour.refuses_reply_queues:
            raise UnsupportedFeature(self.flavour.refuses_reply_queues)
        return self._reply_queues.declare(queue)

    def delete_reply_queue(self, queue: str) -> None:
        """Close the queue's own connection: ActiveMQ deletes it (see :mod:`.reply_queues`)."""
        if self.flavour.refuses_reply_queues:
            raise UnsupportedFeature(self.flavour.refuses_reply_queues)
        self._reply_queues.delete(queue)

    def subscribe_broadcast(
        self, topic: str, callback: Callback, *, replay: float = 0.0
    ) -> Subscription:
        if replay:
            raise UnsupportedFeature(self._NOTHING_KEPT)
        destination = self.destinations.topic(topic)
        self._link.require_open()
        subscription = Subscription(self._next_subscription_id(), topic, callback, broadcast=True)
        return self._consumers.consume(subscription, destination, {"ack": "auto"}, self._link)

    #: Why broadcasts are not kept here (``keep_broadcasts``, ``replay``).
    _NOTHING_KEPT = (
        "ActiveMQ keeps no broadcasts to replay over STOMP (its retroactive consumers "
        "recover a few from memory, as the broker is configured, and none after a restart)"
    )

    def keep_broadcasts(self, topic: str, *, seconds: float) -> None:
        raise UnsupportedFeature(self._NOTHING_KEPT)

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        """A durable subscription to the topic, named after the queue (see :mod:`.bound`;
        on RabbitMQ a queue bound to the topic): subscribing to ``queue`` on this
        transport then consumes it."""
        expires = checked_duration("expires", expires, f"queue {queue!r}", positive=True)
        self._link.require_open()
        self._bound.bind(queue, topic, expires)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._consumers.unsubscribe(subscription)

    def _ack(self, delivery: Delivery) -> None:
        receipt = self._consumers.take(delivery)
        try:
            receipt.consumer.link.write([("ACK", {"id": receipt.ack}, b"")])
        except ConnectionFailed:
            self._consumers.untake(delivery)
            raise
        self._consumers.settled([receipt])

    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        """Return ``delivery`` to its queue as a copy (past the delivery limit: to its
        dead-letter queue), or dead-letter it; the original is acked once the copy
        is receipted."""
        receipt = self._consumers.take(delivery)
        why = reason or ("returned" if requeue else "rejected")
        limited = delivery.source != dlq_name(delivery.source)  # a DLQ has no limit
        if requeue and (not limited or delivery.delivery_count < self.delivery_limit):
            copy = self._returned_copy(delivery, receipt)
            self._settle_with(copy, delivery, on_failure=None)
            return
        if requeue:
            why = delivery_limit_reason(delivery.delivery_count, self.delivery_limit, why)
        self._settle_with(self._dead_letter_copy(delivery, receipt, why), delivery, on_failure=why)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """On the callback thread: a delivery past the delivery limit goes to its DLQ."""
        log.error("dead-lettering %s: %s", delivery.describe(), reason)
        try:
            receipt = self._consumers.take(delivery)
            copy = self._dead_letter_copy(delivery, receipt, reason)
            self._settle_with(copy, delivery, on_failure=reason)
        except TransportError as error:
            log.warning("cannot dead-letter %s: %s", delivery.describe(), error)

    def _returned_copy(self, delivery: Delivery, receipt: Receipt) -> Prepared:
        headers = copied(receipt.frame)
        headers[MESSAGE_ID_HEADER] = delivery.message_id
        headers[DELIVERIES_HEADER] = str(delivery.delivery_count)
        headers["persistent"] = "true"
        # A reply queue's is reached by its address (its own name is the caller's for it).
        reply_queue = self._reply_queues.get(delivery.source)
        queue = reply_queue.address if reply_queue else delivery.source
        return Prepared(
            self.destinations.queue(queue),
            headers,
            delivery.body,
            f"queue {delivery.source!r}",
        )

    def _dead_letter_copy(self, delivery: Delivery, receipt: Receipt, why: str) -> Prepared:
        entry = delivery_entry(delivery.source, why, delivery.delivery_count)
        # The headers as they arrived, not as a callback may have left them.
        arrived = received(receipt.frame, self.destinations.queue_name)
        headers = to_stomp(
            dead_letter_headers(
                arrived, reason=why, queue=delivery.source, history=with_history(arrived, entry)
            )
        )
        headers[MESSAGE_ID_HEADER] = delivery.message_id
        headers["persistent"] = "true"
        target = dlq_name(delivery.source)
        destination = self.destinations.queue(target)
        return Prepared(destination, headers, delivery.body, f"queue {target!r}")

    def _settle_with(self, copy: Prepared, delivery: Delivery, *, on_failure: str | None) -> None:
        """Publish ``copy``, then ack the (taken) ``delivery``. If the copy fails, a
        dead letter (``on_failure``: its reason) is NACKed for the broker's own policy;
        a returned one stays unsettled, to return when this connection goes."""
        batch = Batch(Confirmation(), [delivery])

        def failed(done: Future[None]) -> None:
            error = done.exception()
            if error is None:
                return
            if on_failure is None:
                log.warning("could not return %s to its queue: %s", delivery.describe(), error)
                return
            self.dead_letter_copies_failed += 1
            log.error(
                "%s could not be copied to %s (%s); NACKed it instead: ActiveMQ applies its own "
                "dead-letter policy",
                delivery.describe(),
                copy.describe,
                error,
            )
            try:
                receipt = self._consumers.take(delivery)
                receipt.consumer.link.write(
                    [("NACK", {"id": receipt.ack, **DEAD_LETTER_NACK}, b"")]
                )
                self._consumers.settled([receipt])
            except TransportError as nack_error:
                log.warning("cannot NACK %s either: %s", delivery.describe(), nack_error)

        batch.future.add_done_callback(failed)
        # On a lost connection the batch failed (see failed()); the broker returns it.
        # A copy the broker could not read (a reason too long for a header) failed too.
        with contextlib.suppress(ConnectionFailed, PublishFailed):
            self._publisher.publish([copy], batch)

    # -- introspection ------------------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        raise UnsupportedFeature(
            "ActiveMQ tells a STOMP client no queue depths by state (in flight, delayed, "
            "consumers); zocalo.dlq_check counts what its dead-letter queues hold"
        )

    def browsed_queue_stats(self, *, dead_letters_only: bool = False) -> list[QueueStats]:
        """The queues of our prefix and their dead-letter queues (or those alone) that
        hold messages, browsed (see :mod:`.browse`: no plugin needed, nothing consumed,
        no queue created). Each message counts as ready, delivered or not; delayed ones
        are not seen, nor consumers; a queue shows at most the broker's browse page."""
        self._link.require_open()
        if self.flavour.refuses_browsing:
            raise UnsupportedFeature(self.flavour.refuses_browsing)
        counts: Counter[str] = Counter()
        wildcards = self.destinations.every_queue()
        if dead_letters_only:
            wildcards = self.destinations.every_dead_letter_queue()
        for wildcard in wildcards:
            counts.update(self._browsers.depths(self._link, wildcard, self.endpoint.timeout))
        stats = [
            QueueStats(name, ready=count)
            for destination, count in counts.items()
            if (name := self.destinations.queue_name(destination)) is not None
        ]
        return sorted(stats, key=lambda entry: entry.queue)

    # -- publishing ---------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        prepared = [self._prepare(message) for message in messages]
        acks = deliveries_to_ack(ack)
        reserve_all_or_none(acks, self._consumers.take, self._consumers.untake)
        batch = Batch(Confirmation(), acks)
        self._publisher.publish(prepared, batch)
        return batch.future

    def _prepare(self, message: Outgoing) -> Prepared:
        """``message`` as it goes on the wire; refused (nothing sent) if it cannot go."""
        self.check_supported(message)
        self._link.require_open()
        destination = self.destinations.of(message)
        try:
            headers = to_stomp(message.headers)
        except Uncarriable as error:
            raise PublishFailed(f"cannot publish to {message.describe()}: {error}") from None
        headers.update(routing_headers(message, self.flavour))
        droppable = message if message.droppable else None
        return Prepared(destination, headers, message.body, message.describe(), droppable)
