"""What has to exist on the broker before a message can travel: queues, exchanges, bindings.

RabbitMQ drops (or, with ``mandatory``, returns) a message for a queue nobody
declared, so the transport declares what it uses, once per connection object:
quorum work queues with their ``dlq.<queue>``, a fanout exchange per broadcast
topic, queues bound to a topic, and the route of a delayed message (the
delayed-message plugin's exchange when the broker has it, else the wait-queue
levels of :mod:`zocalo.transport.rabbitmq.delay`). Anything an operator
declared already is used as it is: existence is asked first, with a passive
declare on a short-lived channel (a 404 closes that channel, not ours).

Declarations are synchronous round trips made from the caller's thread,
never on the I/O thread (they would wait on it).
"""

from __future__ import annotations

import logging
from typing import Any

import pika.exceptions
from pika.channel import Channel

from zocalo.errors import ConnectionFailed, TransportError
from zocalo.transport.base import Confirmation, Outgoing
from zocalo.transport.dead_letters import dlq_name, is_dead_letter_queue
from zocalo.transport.rabbitmq import delay as delays
from zocalo.transport.rabbitmq.connection import Connection
from zocalo.transport.rabbitmq.probes import mark_probe

log = logging.getLogger(__name__)

PLUGIN_DELAY_EXCHANGE = delays.PLUGIN_DELAY_EXCHANGE
#: The stream keeping a topic's broadcasts (``keep_broadcasts``): this prefix, the topic.
KEPT_PREFIX = "zocalo.kept."


def kept_stream(topic: str) -> str:
    """The stream that keeps what is broadcast to ``topic``."""
    return KEPT_PREFIX + topic


#: Where a message goes: (exchange, routing key, extra headers).
Route = tuple[str, str, dict[str, Any]]

_DECLARE_METHODS = {
    "exchange": "exchange_declare",
    "queue": "queue_declare",
    "bind_queue": "queue_bind",
    "bind_exchange": "exchange_bind",
}


def mandatory(message: Outgoing, route: Route) -> bool:
    """Whether the broker is to return ``message`` when it cannot route it.

    A broadcast reaches whoever listens, maybe nobody. The delayed-message
    plugin's exchange stores a message to route it later and answers
    ``mandatory`` with a 312 NO_ROUTE return although it keeps the message:
    the batch would fail for a message that is delivered.
    """
    exchange = route[0]
    return not message.broadcast and exchange != PLUGIN_DELAY_EXCHANGE


class Topology:
    """The queues, exchanges and bindings one transport has declared, and how to declare more."""

    def __init__(self, connection: Connection, delivery_limit: int) -> None:
        self._connection = connection
        self._delivery_limit = delivery_limit
        self._known_queues: set[str] = set()
        self._known_exchanges: set[str] = set()
        #: Queues made by bind_queue: (topic, expiry), to declare them alike again.
        self._bound_queues: dict[str, tuple[str, float]] = {}
        #: Streams made by keep_broadcasts: (topic, seconds), likewise.
        self._kept: dict[str, tuple[str, float]] = {}
        #: Reply queues of this connection object, to declare again after a reconnect.
        self._reply_queues: set[str] = set()
        self._delay_route: str | None = None  # "plugin" or "levels", once known
        self._delay_bound: set[str] = set()

    # -- one round trip ---------------------------------------------------------
    def _rpc(self, method: str, *, probe: bool = False, **arguments: Any) -> Any:
        """One synchronous channel method on a short-lived channel (failures close it).

        A ``probe`` (a passive declare) expects a 404 close: pika is not to log it.
        """

        def operation(done: Confirmation) -> None:
            def closed(channel: Channel, reason: BaseException) -> None:
                if not done.done():
                    done.set_exception(reason)

            def opened(channel: Channel) -> None:
                def finished(frame: Any) -> None:
                    done.set_result(frame)
                    channel.close()

                if probe:
                    mark_probe(channel)
                getattr(channel, method)(callback=finished, **arguments)

            channel_ready: Confirmation = Confirmation()
            channel_ready.add_done_callback(lambda f: opened(f.result()))
            self._connection.open_channel(channel_ready, on_close=closed)

        return self._connection.call(operation)

    def _exists(self, method: str, **arguments: Any) -> bool:
        try:
            self._rpc(method, probe=True, passive=True, **arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return False
            raise TransportError(
                f"{self._connection.safe_url}: {method} {arguments}: {error}"
            ) from None
        return True

    # -- queues and exchanges -----------------------------------------------------
    def declare_queue(self, queue: str) -> None:
        """Make sure ``queue`` exists; a queue someone else declared is used as it is.

        A queue we create is a quorum queue dead-lettering to ``dlq.<queue>``
        after ``delivery_limit`` deliveries (which is also created).
        """
        if queue in self._known_queues:
            return
        if not self._exists("queue_declare", queue=queue):
            arguments: dict[str, Any] = {"x-queue-type": "quorum"}
            if not is_dead_letter_queue(queue):
                self.declare_queue(dlq_name(queue))
                arguments.update(
                    {
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": dlq_name(queue),
                        "x-delivery-limit": max(0, self._delivery_limit - 1),
                        # RabbitMQ's default dead-lettering is at-most-once: a dead letter
                        # can be lost if the DLQ's leader is unavailable. at-least-once
                        # (RabbitMQ >= 3.10) needs reject-publish overflow.
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                    }
                )
            try:
                self._rpc("queue_declare", queue=queue, durable=True, arguments=arguments)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code != 406:  # someone else declared it differently: use theirs
                    raise TransportError(f"cannot declare queue {queue!r}: {error}") from None
        self._known_queues.add(queue)

    def declare_dead_letter_queue(self, queue: str) -> None:
        """Give a rejected message's copy somewhere to go: an operator's queue may have
        no ``dlq.<queue>``, and a copy the broker cannot route is no dead letter."""
        if self._connection.on_io_thread():
            return  # a declaration would wait on this very thread; a failed copy is logged
        try:
            self.declare_queue(dlq_name(queue))
        except ConnectionFailed:
            raise
        except TransportError as error:
            log.warning("cannot declare %r for a dead letter: %s", dlq_name(queue), error)

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        """A classic queue bound to the topic's fanout exchange; RabbitMQ deletes it
        after ``expires`` seconds without a consumer (``x-expires``)."""
        self.declare_fanout(topic)
        self._bound_queues[queue] = (topic, expires)  # declared the same way if deleted
        arguments = {"x-queue-type": "classic", "x-expires": max(1, round(expires * 1000))}
        try:
            self._rpc("queue_declare", queue=queue, durable=True, arguments=arguments)
            self._rpc("queue_bind", queue=queue, exchange=topic, routing_key="")
        except pika.exceptions.ChannelClosedByBroker as error:
            raise TransportError(f"cannot bind queue {queue!r} to {topic!r}: {error}") from None

    def keep_broadcasts(self, topic: str, seconds: float) -> str:
        """A stream bound to the topic's fanout exchange, whose messages RabbitMQ
        keeps ``seconds`` (``x-max-age``; it drops whole segments, so some a while
        longer); its name. One declared already with another age keeps its own."""
        stream = kept_stream(topic)
        if stream in self._kept:
            return stream
        self.declare_fanout(topic)
        arguments = {"x-queue-type": "stream", "x-max-age": f"{max(1, round(seconds))}s"}
        try:
            if not self._exists("queue_declare", queue=stream):  # an operator's is used as is
                try:
                    self._rpc("queue_declare", queue=stream, durable=True, arguments=arguments)
                except pika.exceptions.ChannelClosedByBroker as error:
                    if error.reply_code != 406:  # declared differently meanwhile: theirs
                        raise
            self._rpc("queue_bind", queue=stream, exchange=topic, routing_key="")
        except pika.exceptions.ChannelClosedByBroker as error:
            raise TransportError(f"cannot keep the broadcasts of {topic!r}: {error}") from None
        self._kept[stream] = (topic, seconds)
        return stream

    def declare_reply_queue(self, queue: str) -> None:
        """An exclusive classic queue: RabbitMQ deletes it, with its messages, when this
        connection closes or is lost. One that exists already (and is not ours) is refused."""
        if queue not in self._reply_queues and self._exists("queue_declare", queue=queue):
            raise TransportError(f"queue {queue!r} exists already: a reply queue needs a new name")
        try:
            self._rpc(
                "queue_declare",
                queue=queue,
                durable=False,
                exclusive=True,
                arguments={"x-queue-type": "classic"},
            )
        except pika.exceptions.ChannelClosedByBroker as error:
            raise TransportError(f"cannot make reply queue {queue!r}: {error}") from None
        self._reply_queues.add(queue)

    def delete_reply_queue(self, queue: str) -> None:
        """Delete this connection's reply queue now, with its messages (forgotten first,
        so that nothing declares it again)."""
        if queue not in self._reply_queues:
            return
        self._reply_queues.discard(queue)
        try:
            self._rpc("queue_delete", queue=queue)
        except pika.exceptions.ChannelClosedByBroker as error:
            raise TransportError(f"cannot delete reply queue {queue!r}: {error}") from None

    def declare_reply_queues_again(self) -> None:
        """After a reconnect: the lost connection took its reply queues (and whatever
        replies they held) with it; new ones of the same names take later replies."""
        for queue in sorted(self._reply_queues):
            self.declare_reply_queue(queue)

    def declare_fanout(self, topic: str) -> None:
        """The fanout exchange a broadcast to ``topic`` goes to."""
        if topic in self._known_exchanges:
            return
        if not self._exists("exchange_declare", exchange=topic):
            try:
                self._rpc("exchange_declare", exchange=topic, exchange_type="fanout", durable=True)
            except pika.exceptions.ChannelClosedByBroker as error:
                # Not cached: a publish to an exchange that does not exist closes the
                # publishing channel, failing every batch still awaiting confirms.
                raise TransportError(f"cannot declare exchange {topic!r}: {error}") from None
        self._known_exchanges.add(topic)

    def declare_again(self, queue: str, bind_to: str | None) -> None:
        """After the broker deleted what a consumer reads (or may have, during an outage):
        forget it, declare it again.

        ``bind_to`` names the topic of a broadcast subscription (its queue is the
        server's to name); a reply queue comes back as one, a queue made by
        :meth:`bind_queue` bound to its topic with its expiry, any other as a work queue.
        """
        if bind_to is not None:
            self._known_exchanges.discard(bind_to)
            self.declare_fanout(bind_to)
        elif queue in self._reply_queues:
            self.declare_reply_queue(queue)
        elif queue in self._bound_queues:
            topic, expires = self._bound_queues[queue]
            self.bind_queue(queue, topic, expires=expires)
        elif queue in self._kept:
            topic, seconds = self._kept.pop(queue)
            try:
                self.keep_broadcasts(topic, seconds)
            except BaseException:  # still a stream: the next try declares it as one
                self._kept.setdefault(queue, (topic, seconds))
                raise
        else:
            # Whatever we knew of it went with it (its dead-letter queue may have too).
            self._known_queues.difference_update({queue, dlq_name(queue)})
            self._delay_bound.discard(queue)
            self.declare_queue(queue)

    # -- routing --------------------------------------------------------------------
    def route(self, message: Outgoing) -> Route:
        """Where ``message`` is published, declaring what it needs on the way."""
        if message.broadcast:
            self.declare_fanout(message.destination)
            return message.destination, "", {}
        if message.delay:
            return self._delay_target(message.destination, message.delay)
        if message.exchange:
            self._require_exchange(message.exchange)
            return message.exchange, message.destination, {}
        return "", message.destination, {}

    def _require_exchange(self, exchange: str) -> None:
        """Refuse a publish through an exchange that does not exist: the broker would
        close the publishing channel, failing every batch awaiting confirms. Asked each
        time (not cached): an operator's exchange may go at any moment, and publishes
        through a named exchange are rare (a reinjected dead letter)."""
        if not self._exists("exchange_declare", exchange=exchange):
            raise TransportError(f"exchange {exchange!r} does not exist")

    def _delay_target(self, queue: str, seconds: float) -> Route:
        """(exchange, routing key, extra headers) that deliver to ``queue`` after ``seconds``."""
        if self._delay_route is None:
            if self._exists("exchange_declare", exchange=PLUGIN_DELAY_EXCHANGE):
                self._delay_route = "plugin"
            else:
                for kind, arguments in delays.topology():
                    self._rpc(_DECLARE_METHODS[kind], **arguments)
                self._delay_route = "levels"
        if self._delay_route == "plugin":
            return PLUGIN_DELAY_EXCHANGE, queue, {"x-delay": round(seconds * 1000)}
        if queue not in self._delay_bound:
            self._rpc(
                "queue_bind",
                queue=queue,
                exchange=delays.DELIVERY_EXCHANGE,
                routing_key=delays.delivery_binding(queue),
            )
            self._delay_bound.add(queue)
        return delays.first_exchange(), delays.routing_key(seconds, queue), {}
