"""RabbitMQ over AMQP 0-9-1 with pika: ``amqp://user:pass@host:5672/vhost`` (or ``amqps://``).

One pika ``SelectConnection`` runs on its own I/O thread; every public call
is handed to that thread. Publishes go out on one channel in confirm mode
(publisher confirms, not AMQP transactions: a ``tx.commit`` is a synchronous
round trip per message) with ``mandatory`` set, so an unroutable message is
returned and its batch fails instead of vanishing. The input of a batch is
acked on its own channel only when every output is confirmed, and nothing
waits for that: confirms and acks are pipelined.

On the wire it matches python-workflows' pika transport: default exchange
with the queue name as routing key, persistent messages, application headers,
``expiration`` in ms, broadcasts on a fanout exchange named after the topic.
A topic whose broadcasts are kept (``keep_broadcasts``) also feeds a stream,
``zocalo.kept.<topic>``, which a replaying subscriber reads from a point in time.

Queues we declare are quorum queues dead-lettering to ``dlq.<queue>`` with a
delivery limit (so the broker counts deliveries, ``x-delivery-count``);
queues an operator declared are used as they are. Quorum queues have no
message priorities: priority is refused, never ignored.

This class is the contract's face and the wiring; each concern has a module
beside it: :mod:`.url` (URL -> pika parameters), :mod:`.connection` (the
connection, its I/O thread, hand-off to it, reconnect), :mod:`.topology`
(declarations and routing, with :mod:`.delay`), :mod:`.consumers`
(subscriptions, unsettled deliveries, the callback thread) and
:mod:`.confirms` (the publishing channel and its confirm bookkeeping).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import Future

import pika
from pika.channel import Channel

from zocalo.errors import ConnectionFailed
from zocalo.transport.base import (
    Acks,
    Callback,
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    Subscription,
    Transport,
    checked_duration,
    deliveries_to_ack,
    dlq_name,
    reserve_all_or_none,
)
from zocalo.transport.dead_letters import dead_letter_headers, delivery_entry, with_history
from zocalo.transport.options import parse_options
from zocalo.transport.rabbitmq.confirms import Batch, Outstanding, Publisher
from zocalo.transport.rabbitmq.connection import Connection
from zocalo.transport.rabbitmq.consumers import KEPT_PREFETCH, Consumers
from zocalo.transport.rabbitmq.topology import Route, Topology
from zocalo.transport.rabbitmq.url import OPTIONS, connection_parameters
from zocalo.transport.registry import redact_url

__all__ = ["RabbitMQTransport", "connection_parameters"]

log = logging.getLogger(__name__)


class RabbitMQTransport(Transport):
    """A connection to a RabbitMQ broker (a cluster node)."""

    schemes = ("amqp", "amqps")
    serial_callbacks = True
    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.EXPIRATION,
            Capability.DELIVERY_COUNT,
            Capability.DEAD_LETTER,
            Capability.CROSS_PROCESS,
            Capability.REPLY_QUEUE,
            Capability.KEPT_BROADCASTS,
            Capability.EXCHANGE,
            Capability.EXCLUSIVE,
        }
    )

    def __init__(self, url: str, *, delivery_limit: int | None = None) -> None:
        self.nodes, options = connection_parameters(url)
        if delivery_limit is not None:
            options = parse_options(url, OPTIONS, {"delivery_limit": delivery_limit})
        super().__init__(url, delivery_limit=options["delivery_limit"])
        self.safe_url = redact_url(url)
        self._connection = Connection(
            self.nodes,
            self.safe_url,
            on_open=self._on_open,
            on_lost=self._on_lost,
            on_reconnected=lambda: self._consumers.restore(),
        )
        self._topology = Topology(self._connection, self.delivery_limit)
        self._consumers = Consumers(
            self._connection,
            self._topology,
            hand_over=lambda subscription, delivery: self.hand_over(subscription, delivery),
            report_failure=lambda reason: self.report_failure(reason),
        )
        self._publisher = Publisher(self._connection, untake=self._consumers.untake)
        self._outstanding = Outstanding()
        #: How long close() waits for the broker to confirm what is outstanding.
        self._close_wait = float(options.get("timeout", 10.0))
        self._admin: Channel | None = None
        #: Rejected messages whose copy to ``dlq.<queue>`` failed: left to the queue's own
        #: dead-letter policy, which discards them if it has none (each is logged too).
        self.dead_letter_copies_failed = 0

    # -- connection ---------------------------------------------------------
    @property
    def parameters(self) -> pika.ConnectionParameters:
        """The cluster node connected to (or last tried)."""
        return self._connection.parameters

    @property
    def connected(self) -> bool:
        """Open, and after a reconnect with every subscription consuming again."""
        return self._connection.connected

    def connect(self) -> None:
        if self._connection.is_open:
            return
        self._connection.connect()
        self._consumers.start_callbacks()

    def _on_open(self) -> None:
        """A connection opened (first, or after a loss): the channels it needs."""
        self._publisher.open()
        self._admin = self._connection.call(self._connection.open_channel)
        self._topology.declare_reply_queues_again()  # (none on the first open)

    def _on_lost(self, reason: BaseException) -> None:
        """On the I/O thread: what a lost connection leaves behind cannot complete."""
        self._publisher.abandon(
            f"connection to {self.safe_url} closed before the broker confirmed: {reason}"
        )
        self._consumers.connection_lost()

    def close(self) -> None:
        """Close: what is being confirmed is finished first (up to the URL's ``timeout``;
        its acks go out), then the broker returns unacknowledged deliveries to their
        queues.

        A reconnect under way is stopped (a connection it is opening is aborted) and
        never reopens what was closed.
        """
        if self._connection.is_open and not self._connection.on_io_thread():
            self._outstanding.wait(self._close_wait)
        self._connection.close()
        self._consumers.stop_callbacks()

    def abort(self) -> None:
        """As a killed process would leave: unacked deliveries go back to the broker.

        The broker cannot tell a dropped socket from a closed connection as far
        as deliveries go, so this closes without waiting for callbacks.
        """
        self.close()

    # -- declarations ---------------------------------------------------------
    def declare_queue(self, queue: str) -> None:
        """Make sure ``queue`` exists; a queue someone else declared is used as it is.

        A queue we create is a quorum queue dead-lettering to ``dlq.<queue>``
        after ``delivery_limit`` deliveries (which is also created).
        """
        self._topology.declare_queue(queue)

    def declare_reply_queue(self, queue: str) -> str:
        """An exclusive queue: RabbitMQ deletes it when this connection closes or is lost
        (after a reconnect it is declared again, empty)."""
        self._connection.require_open()
        self._topology.declare_reply_queue(queue)
        return queue

    def delete_reply_queue(self, queue: str) -> None:
        self._connection.require_open()
        self._topology.delete_reply_queue(queue)

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        """A classic queue bound to the topic's fanout exchange; RabbitMQ deletes it
        after ``expires`` seconds without a consumer (``x-expires``)."""
        expires = checked_duration("expires", expires, f"queue {queue!r}", positive=True)
        self._topology.bind_queue(queue, topic, expires=expires)

    # -- consuming ----------------------------------------------------------
    def subscribe(
        self, queue: str, callback: Callback, *, prefetch: int = 1, exclusive: bool = False
    ) -> Subscription:
        """An exclusive subscription is an exclusive AMQP consumer; one RabbitMQ refuses
        (another holds the queue) stands by, trying again (see :mod:`.consumers`)."""
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.declare_queue(queue)
        subscription = Subscription(
            self._next_subscription_id(), queue, callback, prefetch=prefetch, exclusive=exclusive
        )
        return self._consumers.consume(subscription, queue, prefetch)

    def subscribe_broadcast(
        self, topic: str, callback: Callback, *, replay: float = 0.0
    ) -> Subscription:
        subscription = Subscription(
            self._next_subscription_id(), topic, callback, broadcast=True, replay=replay
        )
        if replay:  # read the topic's stream, from ``replay`` seconds ago on
            stream = self._topology.keep_broadcasts(topic, replay)
            return self._consumers.consume(subscription, stream, KEPT_PREFETCH)
        self._topology.declare_fanout(topic)
        return self._consumers.consume(subscription, "", 0, bind_to=topic)

    def keep_broadcasts(self, topic: str, *, seconds: float) -> None:
        """Broadcasts to ``topic`` also go to a stream (``zocalo.kept.<topic>``) that
        RabbitMQ keeps ``seconds``; a replaying subscriber reads it."""
        self._connection.require_open()
        self._topology.keep_broadcasts(topic, seconds)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._consumers.unsubscribe(subscription)

    def _ack(self, delivery: Delivery) -> None:
        channel, tag = self._consumers.take(delivery)
        self._connection.soon(lambda: channel.basic_ack(tag) if channel.is_open else None)

    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        if not requeue:
            self._topology.declare_dead_letter_queue(delivery.source)
        channel, tag = self._consumers.take(delivery)
        if requeue:
            self._connection.soon(
                lambda: channel.basic_nack(tag, requeue=True) if channel.is_open else None
            )
            return
        # Dead-letter with our reason: a copy to dlq.<queue>, confirmed, then ack the
        # original; if the copy fails, fall back to the broker's own policy (logged).
        why = reason or "rejected"
        entry = delivery_entry(delivery.source, why, delivery.delivery_count)
        headers = dead_letter_headers(
            delivery.headers,
            reason=why,
            queue=delivery.source,
            history=with_history(delivery.headers, entry),
        )
        copy = Outgoing(dlq_name(delivery.source), delivery.body, headers)
        batch = Batch(Confirmation(), [])

        def settle(done: Future[None]) -> None:
            if not channel.is_open:
                return
            if done.exception() is None:
                channel.basic_ack(tag)
                return
            self.dead_letter_copies_failed += 1
            log.error(
                "%s could not be copied to %r (%s); rejected it instead: RabbitMQ applies "
                "the queue's own dead-letter policy, and discards it if there is none",
                delivery.describe(),
                copy.destination,
                done.exception(),
            )
            channel.basic_reject(tag, requeue=False)

        def settle_soon(done: Future[None]) -> None:
            # Without a connection the original cannot be settled, and need not be:
            # the broker returns it with the rest of what the connection held.
            with contextlib.suppress(ConnectionFailed):
                self._connection.soon(lambda: settle(done))

        batch.future.add_done_callback(settle_soon)
        route: Route = ("", copy.destination, {})
        self._connection.soon(lambda: self._publisher.publish([copy], batch, [route]))
        self._outstanding.add(batch.future)

    # -- publishing ---------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        routes = [self._route(message) for message in messages]
        acks = deliveries_to_ack(ack)
        reserve_all_or_none(acks, self._consumers.take, self._consumers.untake)
        batch = Batch(Confirmation(), acks)
        try:
            self._connection.soon(lambda: self._publisher.publish(list(messages), batch, routes))
        except ConnectionFailed:
            for delivery in acks:
                self._consumers.untake(delivery)
            raise
        self._outstanding.add(batch.future)
        return batch.future

    def _route(self, message: Outgoing) -> Route:
        """Where ``message`` goes, declaring what it needs; refused if it cannot go."""
        self.check_supported(message)
        self._connection.require_open()
        return self._topology.route(message)
