"""Consuming: one channel per subscription, what each holds unsettled, and the callback thread.

Each subscription consumes on a channel of its own, so its prefetch is its
own and closing it (a broadcast's unsubscribe) touches nobody else's
deliveries. A delivery tag only means something on the channel that received
it, so every delivery carries ``(channel, tag)`` as its receipt and its
consumer keeps the tags not yet settled: an ack or nack first *takes* its
tag from there (a second settlement, or one after the channel closed, is
refused in one line, not sent to fail the channel), and a publish that fails
gives the tags of its inputs back.

Deliveries arrive on the I/O thread and are handed to one callback thread,
in order, so a slow handler never stalls heartbeats or confirms. When the
broker cancels a consumer (its queue was deleted), the queue is declared
again and consumed on the same channel; after a reconnect every active
subscription's queue is declared again (it may have gone meanwhile) and consumed.

Before consuming a queue, a subscription checks that no exclusive consumer holds
it, or (exclusive itself) takes its lock: see :mod:`.exclusive`. One that must
wait *stands by*: it is subscribed, and tries again later on a fresh channel.

A replaying broadcast subscription (``replay=``) reads the topic's stream
instead, from that many seconds ago (``x-stream-offset``); a stream needs
acks to hand over more, so each message is acked as it arrives, as a
broadcast is never the subscriber's to settle. A stream starts at a chunk's
beginning and keeps no expiration, so what our broadcasts' ``timestamp`` shows
to be older than asked, or expired, is left out here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pika.exceptions
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from zocalo.errors import TransportError
from zocalo.transport.base import (
    Confirmation,
    Delivery,
    Subscription,
    report_standing_by,
    report_taking_over,
)
from zocalo.transport.dead_letters import without_broker_headers
from zocalo.transport.rabbitmq import exclusive
from zocalo.transport.rabbitmq.connection import Connection
from zocalo.transport.rabbitmq.headers import from_amqp, translate_dead_letter
from zocalo.transport.rabbitmq.topology import Topology

log = logging.getLogger(__name__)

#: Messages of a stream handed over unacknowledged at a time (a stream needs a limit).
KEPT_PREFETCH = 100


@dataclass(eq=False)
class Consumer:
    subscription: Subscription
    queue: str = ""
    #: What to consume again after a reconnect.
    source: str = ""
    prefetch: int = 0
    bind_to: str | None = None
    channel: Channel | None = None
    tag: str = ""
    unsettled: set[int] = field(default_factory=set)
    #: The start (or restart) of consuming under way, failed if the channel closes.
    starting: Confirmation | None = None
    #: A replaying subscription: the epoch seconds its replay reaches back to.
    replay_from: float = 0.0
    #: Standing by (another consumer holds the queue): tried again after this.
    standby_delay: float = 0.0
    #: A plain subscription: looking for the queue's lock; found none (may consume).
    probing: bool = False
    unlocked: bool = False
    #: An exclusive subscription: this connection holds the queue's lock.
    locked: bool = False


class Consumers:
    """Every subscription's consumer, and the thread that runs their callbacks.

    ``hand_over(subscription, delivery)`` runs a callback; ``report_failure(reason)``
    tells the owner a subscription can no longer be served.
    """

    def __init__(
        self,
        connection: Connection,
        topology: Topology,
        hand_over: Callable[[Subscription, Delivery], None],
        report_failure: Callable[[str], None],
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._hand_over = hand_over
        self._report_failure = report_failure
        self._consumers: dict[int, Consumer] = {}
        self._lock = threading.Lock()
        self._callbacks: queue.SimpleQueue[tuple[Consumer, Delivery] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None

    # -- the callback thread ----------------------------------------------------
    def start_callbacks(self) -> None:
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="rabbitmq-callbacks", daemon=True
        )
        self._dispatcher.start()

    def stop_callbacks(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.is_alive():  # a second close adds no sentinel
            self._callbacks.put(None)
            if dispatcher is not threading.current_thread():
                dispatcher.join(10)

    def _dispatch(self) -> None:
        while (item := self._callbacks.get()) is not None:
            consumer, delivery = item
            if delivery.ackable and not delivery.receipt[0].is_open:
                # The broker returns what a closed channel held and redelivers it,
                # maybe to another consumer: handling this copy too would duplicate it.
                log.debug("dropped %s: its channel closed before its turn", delivery.describe())
                continue
            self._hand_over(consumer.subscription, delivery)

    # -- starting and stopping consumers ----------------------------------------
    def consume(
        self, subscription: Subscription, queue_name: str, prefetch: int, bind_to: str | None = None
    ) -> Subscription:
        """Open the subscription's own channel, set its prefetch and start consuming.

        A broadcast gets a server-named exclusive queue bound to the topic's
        fanout exchange, declared on that same channel.
        """
        consumer = Consumer(
            subscription, queue=queue_name, source=queue_name, prefetch=prefetch, bind_to=bind_to
        )
        try:
            return self._begin(consumer)
        except BaseException:
            with self._lock:
                self._consumers.pop(subscription.id, None)
            raise

    def _begin(self, consumer: Consumer) -> Subscription:
        """Make ``consumer`` its subscription's, open its channel and consume; wait."""

        def operation(done: Confirmation) -> None:
            consumer.starting = done
            self._open(consumer)

        with self._lock:
            self._consumers[consumer.subscription.id] = consumer
        return self._connection.call(operation)

    def _open(self, consumer: Consumer) -> None:
        """On the I/O thread: open the consumer's channel, set its prefetch and consume."""

        def opened(channel: Channel) -> None:
            consumer.channel = channel
            channel.add_on_cancel_callback(lambda frame: self._on_cancelled(consumer, frame))
            self._claim(consumer, channel)

        def ready(future: Future[Any]) -> None:
            error, starting = future.exception(), consumer.starting
            if error is None:
                opened(future.result())
            elif starting is not None and not starting.done():
                starting.set_exception(error)

        channel_ready: Confirmation = Confirmation()
        channel_ready.add_done_callback(ready)
        self._connection.open_channel(
            channel_ready, on_close=lambda channel, reason: self._closed(consumer, channel, reason)
        )

    def _claim(self, consumer: Consumer, channel: Channel) -> None:
        """On the I/O thread: consume, once no exclusive consumer holds the queue (an
        exclusive subscription: once it holds the lock and the queue has no consumer)."""
        subscription = consumer.subscription

        def consume(_: Any = None) -> None:
            channel.basic_qos(
                prefetch_count=consumer.prefetch,
                callback=lambda _: self._start(consumer, consumer.starting or Confirmation()),
            )

        def counted(frame: Any) -> None:
            others = frame.method.consumer_count
            if others:
                self._stand_by(consumer, f"{others} other consumer(s) (RabbitMQ)")
            else:
                consume()

        def locked(_: Any) -> None:
            consumer.locked = True
            channel.queue_declare(consumer.queue, passive=True, callback=counted)

        lock = exclusive.lock_name(consumer.queue)
        if subscription.broadcast:
            consume()
        elif subscription.exclusive:
            channel.queue_declare(lock, exclusive=True, callback=locked)
        elif consumer.unlocked:  # the last look found no lock
            consumer.unlocked = False
            consume()
        else:  # found (this connection's own): stand by; absent: the channel closes
            consumer.probing = True
            channel.queue_declare(
                lock,
                passive=True,
                callback=lambda _: self._stand_by(consumer, "an exclusive consumer"),
            )

    def _closed(self, consumer: Consumer, channel: Channel, reason: BaseException) -> None:
        """On the I/O thread: the consumer's channel closed. The look for a lock found
        none (or was not allowed to look): consume on a fresh one. Another consumer
        holds the queue: stand by. Otherwise a start under way fails."""
        subscription = consumer.subscription
        if channel is not consumer.channel:
            return  # an earlier channel of a standby
        probing, consumer.probing = consumer.probing, False
        connection = self._connection
        if subscription.active and connection.alive and not connection.closing:
            if probing and not exclusive.held_by_another(reason):  # none, or none we may see
                consumer.unlocked = True
                consumer.channel = None
                self._open(consumer)
                return
            if exclusive.held_by_another(reason):
                self._stand_by(
                    consumer, f"another consumer (RabbitMQ: {exclusive.reply_text(reason)})"
                )
                return
        starting = consumer.starting
        if starting is not None and not starting.done():
            starting.set_exception(
                TransportError(f"cannot consume {subscription.describe()}: {reason}")
            )

    def _stand_by(self, consumer: Consumer, holder: str) -> None:
        """On the I/O thread: ``holder`` holds the queue; try again later."""
        subscription = consumer.subscription
        if not consumer.standby_delay:
            report_standing_by(subscription, holder)
        consumer.standby_delay = exclusive.next_delay(consumer.standby_delay)
        starting = consumer.starting
        if starting is not None and not starting.done():
            starting.set_result(subscription)  # subscribed: standing by is no error

        def again() -> None:
            with self._lock:
                current = self._consumers.get(subscription.id) is consumer
            if not (current and subscription.active and self._connection.alive):
                return
            old, consumer.channel, consumer.starting = consumer.channel, None, None
            if old is not None and old.is_open:
                old.close()
            self._open(consumer)

        self._connection.later(consumer.standby_delay, again)

    def _consuming(self, consumer: Consumer, done: Confirmation) -> None:
        """On the I/O thread: the broker accepted the consumer."""
        if consumer.standby_delay:
            consumer.standby_delay = 0.0
            report_taking_over(consumer.subscription)
        if not done.done():
            done.set_result(consumer.subscription)

    def _start(self, consumer: Consumer, done: Confirmation) -> None:
        """On the I/O thread: consume on the consumer's channel (a broadcast first
        declares its server-named queue and binds it to the topic's exchange)."""
        channel, subscription = consumer.channel, consumer.subscription
        assert channel is not None
        consumer.starting = done
        consumer.replay_from = time.time() - subscription.replay

        def start(_: Any = None) -> None:
            consumer.tag = channel.basic_consume(
                consumer.queue,
                lambda ch, method, properties, body: self._on_message(
                    consumer, ch, method, properties, body
                ),
                auto_ack=subscription.broadcast and not subscription.replay,
                exclusive=consumer.bind_to is not None or subscription.exclusive,
                arguments=_stream_offset(consumer) if subscription.replay else None,
                callback=lambda frame: self._consuming(consumer, done),
            )

        def bind(frame: Any) -> None:
            consumer.queue = frame.method.queue
            channel.queue_bind(consumer.queue, consumer.bind_to, routing_key="", callback=start)

        if consumer.bind_to is not None:
            channel.queue_declare("", exclusive=True, auto_delete=True, callback=bind)
        else:
            start()

    def restore(self) -> int:
        """After a reconnect: consume every active subscription again; how many.

        What each reads is declared again first, as after a cancellation: it may have
        gone during the outage (an operator deleted it, a node lost it). One that cannot
        be consumed fails the attempt and stays subscribed: the next attempt, on a new
        connection, tries it again.
        """
        with self._lock:
            consumers = [c for c in self._consumers.values() if c.subscription.active]
        for lost in consumers:
            self._topology.declare_again(lost.source, lost.bind_to)
            self._begin(
                Consumer(
                    lost.subscription,
                    queue=lost.source,
                    source=lost.source,
                    prefetch=lost.prefetch,
                    bind_to=lost.bind_to,
                )
            )
        return len(consumers)

    def connection_lost(self) -> None:
        """On the I/O thread: what the lost connection held, the broker returns."""
        with self._lock:
            for consumer in self._consumers.values():
                consumer.unsettled.clear()  # the broker returns them; their acks would fail

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            consumer = self._consumers.get(subscription.id)
        if consumer is None or not subscription.active:
            raise TransportError(f"{subscription.describe()} is not subscribed")
        subscription.active = False

        def cancel(done: Confirmation) -> None:
            channel = consumer.channel
            if channel is None or not channel.is_open or consumer.tag not in channel.consumer_tags:
                self._release(consumer, done)  # cancelled (by the broker), channel gone, standby
            else:
                channel.basic_cancel(consumer.tag, callback=lambda _: self._release(consumer, done))

        self._connection.call(cancel)
        channel = consumer.channel
        if subscription.broadcast and channel is not None:
            self._connection.soon(channel.close)
            with self._lock:
                self._consumers.pop(subscription.id, None)

    def _release(self, consumer: Consumer, done: Confirmation) -> None:
        """On the I/O thread: let go of the queue's lock, if held (a standby takes over)."""
        if not consumer.locked:
            done.set_result(None)
            return
        consumer.locked = False
        lock = exclusive.lock_name(consumer.queue)

        def delete(channel: Channel, close: bool) -> None:
            def deleted(_: Any) -> None:
                if close:
                    channel.close()
                done.set_result(None)

            channel.queue_delete(lock, callback=deleted)

        channel = consumer.channel
        if channel is not None and channel.is_open:
            delete(channel, close=False)
            return
        fresh: Confirmation = Confirmation()
        fresh.add_done_callback(
            lambda f: delete(f.result(), close=True) if not f.exception() else done.set_result(None)
        )
        self._connection.open_channel(fresh)

    # -- a consumer the broker cancelled ------------------------------------------
    def _on_cancelled(self, consumer: Consumer, frame: Any) -> None:
        """The broker cancelled a consumer (its queue was deleted): consume it again.

        Without this the service would sit idle forever on a queue that no longer
        exists. The queue is declared again and consumed on the same channel, so
        deliveries in hand can still be settled. If that fails the transport's
        owner is told (``report_failure``): it should stop, with an error, for its
        supervisor to restart it.
        """
        if frame.method.consumer_tag != consumer.tag:
            return
        consumer.tag = ""  # nothing of ours to cancel any more
        if self._connection.closing or not consumer.subscription.active:
            return
        log.warning(
            "RabbitMQ cancelled the consumer of %s (was the queue deleted?); "
            "declaring it again and resuming",
            consumer.subscription.describe(),
        )
        threading.Thread(
            target=self._resume, args=(consumer,), name="rabbitmq-resume", daemon=True
        ).start()

    def _resume(self, consumer: Consumer) -> None:
        subscription = consumer.subscription
        try:
            self._topology.declare_again(consumer.source, consumer.bind_to)

            def restart(done: Confirmation) -> None:
                # On the I/O thread, where unsubscribe acts too: never revive a
                # consumer that was unsubscribed while its queue was declared again.
                if not subscription.active or self._connection.closing:
                    done.set_result(None)
                    return
                self._start(consumer, done)

            if self._connection.call(restart) is None:
                return
        except (TransportError, TimeoutError, pika.exceptions.AMQPError) as error:
            if self._connection.closing or not subscription.active:
                return
            self._report_failure(
                f"RabbitMQ cancelled the consumer of {subscription.describe()} and it "
                f"cannot be consumed again: {error}"
            )
            return
        log.warning("consuming %s again", subscription.describe())

    # -- deliveries -----------------------------------------------------------------
    def _on_message(
        self,
        consumer: Consumer,
        channel: Channel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        raw_headers = from_amqp(properties.headers or {})
        headers = dict(raw_headers)
        count = int(headers.pop("x-delivery-count", 0) or 0)
        if consumer.subscription.replay:  # a kept broadcast, read from the topic's stream
            headers.pop("x-stream-offset", None)
            channel.basic_ack(method.delivery_tag)
            if _left_out(properties, consumer.replay_from):
                return
        translate_dead_letter(headers)
        tag = method.delivery_tag
        delivery = Delivery(
            subscription=consumer.subscription,
            message_id=properties.message_id
            or content_id(consumer.subscription.destination, body, raw_headers),
            body=body,
            headers=headers,
            delivery_count=count + 1,
            redelivered=bool(method.redelivered) or count > 0,
            ackable=not consumer.subscription.broadcast,
            receipt=(channel, tag),
        )
        if delivery.ackable:
            with self._lock:
                consumer.unsettled.add(tag)
        self._callbacks.put((consumer, delivery))

    def take(self, delivery: Delivery) -> tuple[Channel, int]:
        """Mark ``delivery`` settled here, or raise if it is not awaiting settlement."""
        self._connection.require_open()
        with self._lock:
            consumer = self._consumers.get(delivery.subscription.id)
            channel, tag = delivery.receipt if delivery.ackable else (None, None)
            if (
                consumer is None
                or channel is not consumer.channel
                or (tag not in consumer.unsettled)
            ):
                raise TransportError(
                    f"{delivery.describe()} is not awaiting acknowledgement "
                    "(already settled, not ackable, or its channel closed)"
                )
            consumer.unsettled.discard(tag)
        return channel, tag

    def untake(self, delivery: Delivery) -> None:
        """Undo :meth:`take`: ``delivery`` awaits settlement again, if its channel lives."""
        channel, tag = delivery.receipt
        with self._lock:
            consumer = self._consumers.get(delivery.subscription.id)
            if consumer is not None and channel.is_open and consumer.channel is channel:
                consumer.unsettled.add(tag)


def _stream_offset(consumer: Consumer) -> dict[str, Any]:
    """Where a replaying subscription starts reading its stream."""
    since = datetime.datetime.fromtimestamp(consumer.replay_from, tz=datetime.UTC)
    return {"x-stream-offset": since}


def _left_out(properties: BasicProperties, replay_from: float) -> bool:
    """Whether a message of a stream is older than the replay asked for, or expired, as
    far as its ``timestamp`` (whole seconds, rounded down: one second of grace) tells."""
    if not isinstance(properties.timestamp, int):
        return False  # not one of our broadcasts: kept, as the stream kept it
    published = properties.timestamp + 1  # at the latest
    if published < replay_from:
        return True
    try:
        expiration = float(properties.expiration) / 1000 if properties.expiration else None
    except ValueError:
        return False
    return expiration is not None and published + expiration <= time.time()


def content_id(source: str, body: bytes, headers: dict[str, Any]) -> str:
    """A message id for a message published without one (python-workflows sends none).

    Services keep message ids as durable identities (a join's parts, the first
    id a database step saw), so the id must be the same on every delivery of
    the message, on any channel, after any restart: it is derived from what
    the message is, never from how it was delivered. The broker's own headers
    change as it travels (``x-delivery-count``, ``x-death``) and are left out.
    """
    digest = hashlib.sha256()
    digest.update(source.encode())
    digest.update(b"\0")
    digest.update(body)
    digest.update(b"\0")
    stable = without_broker_headers(headers)
    digest.update(json.dumps(stable, sort_keys=True, default=str).encode())
    return f"sha256:{digest.hexdigest()[:32]}"
