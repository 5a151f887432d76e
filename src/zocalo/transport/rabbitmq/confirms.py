"""Publishing with publisher confirms: one channel, and the bookkeeping that settles batches.

A :meth:`~zocalo.transport.base.Transport.publish` call is one batch: its
messages go out on the publishing channel in confirm mode with
``mandatory`` set (where :func:`~zocalo.transport.rabbitmq.topology.mandatory`
says), each numbered by the channel's confirm sequence. The broker
answers each number with an ack or a nack (``multiple`` covers every
number up to it) and, before the ack, returns a message it could not route.
When the last message of a batch is answered the batch completes: every
input it carries is acked, or, if any message was refused or returned, none
is and the confirmation fails with each reason once, counted. A droppable
message (a reply) refused or returned is only logged: it does not fail its batch.

Everything here runs on the connection's I/O thread, except :meth:`Publisher.open`,
which the opening thread calls; nothing here waits.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from zocalo.errors import PublishFailed
from zocalo.transport.base import (
    Confirmation,
    Delivery,
    Outgoing,
    report_dropped,
    without_broker_headers,
)
from zocalo.transport.rabbitmq.connection import Connection
from zocalo.transport.rabbitmq.headers import to_amqp
from zocalo.transport.rabbitmq.topology import Route, mandatory

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Batch:
    """One publish call: its outputs, the inputs to ack, and its confirmation."""

    future: Confirmation
    acks: list[Delivery]
    remaining: int = 0
    #: (destination, why) of each message the broker did not take.
    failures: list[tuple[str, str]] = field(default_factory=list)


class Outstanding:
    """The publishes not yet confirmed or failed, counted from the call: ``close()``
    waits for them, so the acks they release go out before the goodbye (else each
    input returned, to be handled twice)."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def add(self, future: Confirmation) -> None:
        with self._changed:
            self._count += 1
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[Any]) -> None:
        with self._changed:
            self._count -= 1
            if not self._count:
                self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until none is outstanding; False if some still are."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._count, timeout)


class Publisher:
    """The publishing channel and which batch each unconfirmed message belongs to.

    ``untake`` gives an input of a failed batch back to its consumer, to be
    settled again by whoever holds it.
    """

    def __init__(self, connection: Connection, untake: Callable[[Delivery], None]) -> None:
        self._connection = connection
        self._untake = untake
        self.channel: Channel | None = None
        self._sequence = 0
        #: Confirm number -> (batch, message id, the message).
        self._unconfirmed: dict[int, tuple[Batch, str, Outgoing]] = {}
        #: Message id -> why the broker returned it, and what to do about it (for a
        #: message that fails its batch; a dropped reply needs no advice).
        self._returned: dict[str, tuple[str, str]] = {}
        #: Message ids: unique per connection object, cheaper than a uuid4 each.
        self._id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._ids = itertools.count(1)

    # -- the channel ------------------------------------------------------------
    def open(self) -> None:
        """From the opening thread: a new publishing channel, its confirm numbers from 1."""
        self._sequence = 0
        self.channel = self._connection.call(self._open_channel)

    def _open_channel(self, done: Confirmation) -> None:
        def ready(channel: Channel) -> None:
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(
                self._on_confirm, callback=lambda frame: done.set_result(channel)
            )

        inner: Confirmation = Confirmation()
        inner.add_done_callback(
            lambda f: ready(f.result()) if not f.exception() else done.set_exception(f.exception())
        )
        self._connection.open_channel(inner, on_close=self._on_closed)

    def _on_closed(self, channel: Channel, reason: BaseException) -> None:
        self.abandon(f"publishing channel closed: {reason}")
        if self._connection.alive:
            log.error("publishing channel closed (%s); reopening it", reason)
            self._sequence = 0
            reopened: Confirmation = Confirmation()
            reopened.add_done_callback(
                lambda f: setattr(self, "channel", f.result()) if not f.exception() else None
            )
            self._open_channel(reopened)

    def abandon(self, why: str) -> None:
        """Every unconfirmed batch fails with ``why``: its confirms will never come.

        Each fails as any other failed batch does, its inputs given back: left
        taken, they could never be settled again, and the consumer's prefetch
        would fill with them until it received nothing more.
        """
        batches = {id(batch): batch for batch, _, _ in self._unconfirmed.values()}
        self._unconfirmed.clear()
        self._returned.clear()
        for batch in batches.values():
            self.fail(batch, why)

    # -- publishing -------------------------------------------------------------
    def publish(self, messages: list[Outgoing], batch: Batch, routes: list[Route]) -> None:
        """Publish every message of a batch, then wait for confirms."""
        publisher = self.channel
        if publisher is None or not publisher.is_open:
            self.fail(batch, "the publishing channel is not open")
            return
        if not messages:
            self._complete(batch)
            return
        batch.remaining = len(messages)
        try:
            self._publish_each(publisher, messages, batch, routes)
        except Exception as error:  # e.g. a header value AMQP cannot carry
            for number, (owner, _, _) in list(self._unconfirmed.items()):
                if owner is batch:
                    del self._unconfirmed[number]
            why = error if isinstance(error, _Unpublishable) else f"{type(error).__name__}: {error}"
            self.fail(batch, f"cannot publish to {why}")

    def _publish_each(
        self, publisher: Channel, messages: list[Outgoing], batch: Batch, routes: list[Route]
    ) -> None:
        for message, route in zip(messages, routes, strict=True):
            exchange, routing_key, extra = route
            message_id = f"{self._id_prefix}{next(self._ids)}"
            try:
                properties = BasicProperties(
                    # Never the broker's own (x-death...): see without_broker_headers.
                    headers={**to_amqp(without_broker_headers(message.headers)), **extra},
                    delivery_mode=2,
                    message_id=message_id,
                    expiration=(
                        str(round(message.expiration * 1000))
                        if message.expiration is not None
                        else None
                    ),
                    # When it was broadcast: a replay of a kept topic reads it (see consumers).
                    timestamp=int(time.time()) if message.broadcast else None,
                )
                publisher.basic_publish(
                    exchange,
                    routing_key,
                    message.body,
                    properties,
                    mandatory=mandatory(message, route),
                )
            except Exception as error:
                # pika encodes the whole frame before sending any of it: nothing of this
                # message reached the broker, so it takes no confirm sequence number.
                raise _Unpublishable(
                    f"{message.describe()}: {type(error).__name__}: {error}"
                ) from error
            # Recorded after the send: its confirm is handled on this same thread, later.
            self._sequence += 1
            self._unconfirmed[self._sequence] = (batch, message_id, message)

    # -- the broker's answers -----------------------------------------------------
    def _on_return(
        self, channel: Channel, method: Basic.Return, properties: BasicProperties, body: bytes
    ) -> None:
        returned = f"returned by the broker: {method.reply_code} {method.reply_text}"
        advice = ""
        if method.reply_code == 312 and not method.exchange:  # NO_ROUTE, default exchange
            returned = f"the queue does not exist ({returned})"
            advice = "; create it by starting its service, or with zocalo.configure_rabbitmq"
        else:
            returned += f" (exchange {method.exchange!r}, routing key {method.routing_key!r})"
        self._returned[properties.message_id or ""] = (returned, advice)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = [t for t in self._unconfirmed if t <= tag] if method.multiple else [tag]
        refused = isinstance(method, Basic.Nack)
        for number in sorted(tags):
            entry = self._unconfirmed.pop(number, None)
            if entry is None:
                continue
            batch, message_id, message = entry
            why, advice = self._returned.pop(message_id, ("", ""))
            if refused:
                why, advice = "refused by the broker (basic.nack: queue full or unavailable)", ""
            if why and message.droppable:
                report_dropped(message, why)
            elif why:
                batch.failures.append((message.describe(), why + advice))
            batch.remaining -= 1
            if batch.remaining == 0:
                self._complete(batch)

    # -- outcomes -------------------------------------------------------------------
    def _complete(self, batch: Batch) -> None:
        if batch.failures:
            self.fail(batch, _counted(batch.failures))
            return
        # An input whose channel closed meanwhile (its delivery tag belongs to a dead
        # channel, e.g. of a lost connection) cannot be acked any more: the broker
        # redelivers it. Then none is acked, as for any other failure of the batch.
        lost = [delivery for delivery in batch.acks if not delivery.receipt[0].is_open]
        if lost:
            self.fail(
                batch,
                "outputs were published, but the channel of "
                + ", ".join(delivery.describe() for delivery in lost)
                + " closed before it could be acknowledged; no input was acknowledged",
            )
            return
        for delivery in batch.acks:
            channel, tag = delivery.receipt
            channel.basic_ack(tag)
        batch.future.set_result(None)

    def fail(self, batch: Batch, why: str) -> None:
        """``batch`` failed: no input acked, each given back to be settled again."""
        # Not acked: give them back to the caller to nack, or the broker to redeliver.
        for delivery in batch.acks:
            self._untake(delivery)
        if not batch.future.done():
            batch.future.set_exception(PublishFailed(why))


def _counted(failures: list[tuple[str, str]]) -> str:
    """Each distinct failure once, with how many messages it hit (1000 sends to a
    missing queue are one sentence, not 1000)."""
    counts = collections.Counter(failures)
    return "; ".join(
        f"{destination} cannot take {f'{count} messages' if count > 1 else 'it'}: {why}"
        for (destination, why), count in counts.items()
    )


class _Unpublishable(PublishFailed):
    """A message pika cannot encode (text: its destination and why)."""
