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

Queues we declare are quorum queues dead-lettering to ``dlq.<queue>`` with a
delivery limit (so the broker counts deliveries, ``x-delivery-count``);
queues an operator declared are used as they are. Quorum queues have no
message priorities: priority is refused, never ignored.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from zocalo.errors import ConnectionFailed, InvalidURL, PublishFailed, TransportError
from zocalo.transport.base import (
    DEFAULT_DELIVERY_LIMIT,
    Acks,
    Callback,
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    Subscription,
    Transport,
    deliveries_to_ack,
    dlq_name,
    reserve_all_or_none,
    without_broker_headers,
)
from zocalo.transport.dead_letters import (
    dead_letter_headers,
    dead_letter_marks,
    delivery_entry,
    with_history,
)
from zocalo.transport.options import Option, existing_file, parse_options, split_url
from zocalo.transport.rabbitmq import delay as delays
from zocalo.transport.rabbitmq.headers import from_amqp, to_amqp
from zocalo.transport.rabbitmq.probes import mark_probe
from zocalo.transport.registry import redact_url

log = logging.getLogger(__name__)

#: The reference's delayed-message exchange (needs the RabbitMQ plugin).
PLUGIN_DELAY_EXCHANGE = "delayed"
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 30.0
#: The URL options ``amqp://...?...`` understands.
OPTIONS = (
    Option("hosts", str, ""),
    Option("delivery_limit", int, DEFAULT_DELIVERY_LIMIT, at_least=1),
    Option("cafile", existing_file),
    Option("certfile", existing_file),
    Option("keyfile", existing_file),
    Option("connection_name", str, "zocalo"),
    Option("heartbeat", int, 30, at_least=0, at_most=65535),
    Option("timeout", float, 10.0, above=0),
)


def connection_parameters(url: str) -> tuple[list[pika.ConnectionParameters], dict[str, Any]]:
    """pika parameters for ``url`` (one per cluster node), and our own query options.

    ``?hosts=h2:p2,h3:p3`` names further nodes of a cluster, tried in order after
    the URL's own host (python-zocalo's comma-separated ``pika`` hosts map here).
    """
    parts = split_url(url)
    options = parse_options(url, OPTIONS)
    tls = parts.scheme == "amqps"
    context = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=options.get("cafile"))
            if options.get("certfile"):
                context.load_cert_chain(options["certfile"], options.get("keyfile"))
        except (OSError, ssl.SSLError) as error:
            files = ", ".join(
                f"{name}={options[name]}"
                for name in ("cafile", "certfile", "keyfile")
                if options[name]
            )
            raise InvalidURL(
                f"transport URL {redact_url(url)}: cannot load the TLS files ({files}): {error}"
            ) from None
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    credentials = pika.PlainCredentials(
        unquote(parts.username or "guest"), unquote(parts.password or "guest")
    )
    default_port = 5671 if tls else 5672
    nodes = [(parts.hostname or "localhost", parts.port or default_port)]
    for node in filter(None, (node.strip() for node in options["hosts"].split(","))):
        nodes.append(_cluster_node(url, node, default_port))
    return [
        _node_parameters(host, port, vhost, credentials, context, options) for host, port in nodes
    ], options


def _cluster_node(url: str, node: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of one ``?hosts=`` entry."""
    try:
        parts = urlsplit(f"//{node}")
        host, port = parts.hostname, parts.port
    except ValueError as error:
        host, port, why = None, None, str(error)
    else:
        why = "no host name"
    if not host or parts.username is not None or parts.path:
        raise InvalidURL(
            f"transport URL {redact_url(url)}: option hosts: {node!r} is not host[:port] ({why})"
        )
    return host, port or default_port


def _node_parameters(
    host: str,
    port: int,
    vhost: str,
    credentials: pika.PlainCredentials,
    tls_context: ssl.SSLContext | None,
    options: dict[str, str],
) -> pika.ConnectionParameters:
    """One node's parameters; over TLS its certificate is checked against its own name."""
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=credentials,
        ssl_options=pika.SSLOptions(tls_context, host) if tls_context else None,
        heartbeat=int(options.get("heartbeat", 30)),
        connection_attempts=1,
        socket_timeout=float(options.get("timeout", 10)),
        client_properties={"connection_name": options.get("connection_name", "zocalo")},
    )


@dataclass(eq=False)
class _Batch:
    """One publish call: its outputs, the inputs to ack, and its confirmation."""

    future: Confirmation
    acks: list[Delivery]
    remaining: int = 0
    #: (destination, why) of each message the broker did not take.
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass(eq=False)
class _Consumer:
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
        }
    )

    def __init__(self, url: str, *, delivery_limit: int | None = None) -> None:
        self.nodes, options = connection_parameters(url)
        self.parameters = self.nodes[0]
        if delivery_limit is not None:
            options = parse_options(url, OPTIONS, {"delivery_limit": delivery_limit})
        super().__init__(url, delivery_limit=options["delivery_limit"])
        self.safe_url = redact_url(url)
        self._connection: pika.SelectConnection | None = None
        self._thread: threading.Thread | None = None
        self._publisher: Channel | None = None
        self._admin: Channel | None = None
        self._sequence = 0
        self._unconfirmed: dict[int, tuple[_Batch, str, str]] = {}
        self._returned: dict[str, str] = {}
        self._consumers: dict[int, _Consumer] = {}
        self._lock = threading.Lock()
        self._known_queues: set[str] = set()
        self._known_exchanges: set[str] = set()
        #: Queues made by bind_queue: (topic, expiry), to declare them alike again.
        self._bound_queues: dict[str, tuple[str, float]] = {}
        self._delay_route: str | None = None  # "plugin" or "levels", once known
        self._delay_bound: set[str] = set()
        self._callbacks: queue.SimpleQueue[tuple[_Consumer, Delivery] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._open = False
        self._closing = False
        #: Message ids: unique per connection object, cheaper than a uuid4 each.
        self._id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._soon_queue: collections.deque[Callable[[], None]] = collections.deque()
        self._soon_scheduled = False
        self._ids = itertools.count(1)
        self._closed = threading.Event()
        #: True from a lost connection until its subscriptions are restored.
        self._restoring = False
        #: Rejected messages whose copy to ``dlq.<queue>`` failed: left to the queue's own
        #: dead-letter policy, which discards them if it has none (each is logged too).
        self.dead_letter_copies_failed = 0
        self._reconnector: threading.Thread | None = None

    # -- connection ---------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Open, and after a reconnect with every subscription consuming again."""
        return self._open and not self._restoring

    def connect(self) -> None:
        if self._open:
            return
        self._closing = False
        self._closed.clear()  # else a later reconnect would give up after one attempt
        self._restoring = False
        self._open_connection()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="rabbitmq-callbacks", daemon=True
        )
        self._dispatcher.start()

    def _open_connection(self) -> None:
        """Connect to the first cluster node that answers, or raise ConnectionFailed."""
        failures: list[str] = []
        for node in self.nodes:
            if self._closing:
                raise ConnectionFailed(f"{self.safe_url}: closed while connecting")
            self.parameters = node
            try:
                self._open_node()
                return
            except ConnectionFailed as error:
                failures.append(str(error))
        raise ConnectionFailed("; ".join(failures))

    def _open_node(self) -> None:
        """Connect to ``self.parameters``, open the publishing and admin channels."""
        opened: Confirmation = Confirmation()

        def on_open(connection: pika.SelectConnection) -> None:
            opened.set_result(None)

        def on_open_error(connection: pika.SelectConnection, error: BaseException) -> None:
            opened.set_exception(
                error if isinstance(error, BaseException) else RuntimeError(str(error))
            )

        self._connection = pika.SelectConnection(
            self.parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._thread = threading.Thread(
            target=self._run_ioloop, args=(self._connection,), name="rabbitmq-io", daemon=True
        )
        self._thread.start()
        try:
            opened.result(self.parameters.socket_timeout + 5)
        except Exception as error:
            self._stop_ioloop()
            raise ConnectionFailed(self._explain(error)) from None
        self._open = True
        self._sequence = 0
        # A batch of operations scheduled on a lost connection's loop never ran.
        self._soon_scheduled = False
        if self._soon_queue:
            self._soon(lambda: None)
        self._publisher = self._call(self._open_publisher)
        self._admin = self._call(self._open_channel)

    def _run_ioloop(self, connection: pika.SelectConnection) -> None:
        try:
            connection.ioloop.start()
        except AssertionError:
            if not self._closing:
                raise
            # close() aborted a connection mid-handshake (a reconnect attempt): pika 1.4
            # then reports the abort with the exception class instead of an instance and
            # fails an assertion on its I/O thread, after the socket was closed.
            log.debug("pika's I/O loop ended on an aborted connection attempt", exc_info=True)

    def _reconnect(self) -> None:
        """After an unexpected loss: reconnect with growing delays, then resubscribe."""
        delay, attempt = RECONNECT_FIRST_DELAY, 0
        while not self._closing:
            attempt += 1
            try:
                self._open_connection()
                if self._closing:  # close() came while this attempt was under way
                    self._open = False
                    self._shut(self._connection)
                    return
                with self._lock:
                    consumers = [c for c in self._consumers.values() if c.subscription.active]
                for consumer in consumers:
                    self._consume(
                        consumer.subscription, consumer.source, consumer.prefetch, consumer.bind_to
                    )
            except (ConnectionFailed, TransportError, TimeoutError) as error:
                if self._closing:
                    self._open = False
                    self._shut(self._connection)
                    return
                log.warning(
                    "reconnecting to %s failed (attempt %d): %s; next try in %.1f s",
                    self.safe_url,
                    attempt,
                    error,
                    delay,
                )
                self._open = False
                self._stop_ioloop()
                if self._closed.wait(delay):
                    return
                delay = min(RECONNECT_MAX_DELAY, delay * 2)
                continue
            self._restoring = False
            log.warning(
                "reconnected to %s after %d attempt(s); %d subscription(s) restored",
                self.safe_url,
                attempt,
                len(consumers),
            )
            return

    def _explain(self, error: BaseException) -> str:
        where = f"RabbitMQ at {self.safe_url}"
        if len(self.nodes) > 1:
            where += f" (node {self.parameters.host}:{self.parameters.port})"
        error = _cause(error)
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"TLS: {where} presented a certificate this client does not trust "
                f"({text}); check cafile"
            )
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake with {where} failed ({text})"
        if isinstance(
            error, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError
        ):
            return f"{where} refused the credentials ({text})"
        if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
            return (
                f"{where}: access to virtual host {self.parameters.virtual_host!r} denied "
                f"or it does not exist ({text})"
            )
        return f"cannot connect to {where} ({text})"

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        was_open = self._open
        self._open = False
        for batch, _, _ in list(self._unconfirmed.values()):
            if not batch.future.done():
                batch.future.set_exception(
                    PublishFailed(
                        f"connection to {self.safe_url} closed before the broker "
                        f"confirmed: {reason}"
                    )
                )
        self._unconfirmed.clear()
        with self._lock:
            for consumer in self._consumers.values():
                consumer.unsettled.clear()  # the broker returns them; their acks would fail
        connection.ioloop.stop()
        if was_open and not self._closing:
            log.warning("connection to %s lost: %s; reconnecting", self.safe_url, reason)
            self._restoring = True
            self._reconnector = threading.Thread(
                target=self._reconnect, name="rabbitmq-reconnect", daemon=True
            )
            self._reconnector.start()

    def _stop_ioloop(self) -> None:
        if self._connection is not None and self._thread is not None:
            with contextlib.suppress(Exception):
                self._connection.ioloop.add_callback_threadsafe(self._connection.ioloop.stop)
            if self._thread is not threading.current_thread():
                self._thread.join(10)

    def close(self) -> None:
        """Close: the broker returns unacknowledged deliveries to their queues.

        A reconnect under way is stopped (a connection it is opening is aborted) and
        never reopens what was closed.
        """
        self._closing = True
        self._closed.set()
        self._open = False
        self._shut(self._connection)
        reconnector = self._reconnector
        if reconnector is not None and reconnector is not threading.current_thread():
            reconnector.join(15)
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.is_alive():  # a second close adds no sentinel
            self._callbacks.put(None)
            if dispatcher is not threading.current_thread():
                dispatcher.join(10)

    def _shut(self, connection: pika.SelectConnection | None) -> None:
        """Close ``connection`` (open, or still opening) and wait for its I/O thread."""
        if connection is None:
            return
        thread = self._thread
        with contextlib.suppress(Exception):
            connection.ioloop.add_callback_threadsafe(
                lambda: (
                    None if connection.is_closing or connection.is_closed else connection.close()
                )
            )
        if thread is not None and thread is not threading.current_thread():
            thread.join(15)

    def abort(self) -> None:
        """As a killed process would leave: unacked deliveries go back to the broker.

        The broker cannot tell a dropped socket from a closed connection as far
        as deliveries go, so this closes without waiting for callbacks.
        """
        self.close()

    # -- running things on the I/O thread -------------------------------------
    def _call(self, operation: Callable[[Confirmation], None], timeout: float = 30) -> Any:
        """Run ``operation(future)`` on the I/O thread and wait for its result."""
        if not self._open or self._connection is None:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")
        done: Confirmation = Confirmation()

        def run() -> None:
            try:
                operation(done)
            except Exception as error:
                if not done.done():
                    done.set_exception(error)

        self._connection.ioloop.add_callback_threadsafe(run)
        try:
            return done.result(timeout)
        except TimeoutError:  # builtin on 3.11: not one of ours, so callers would miss it
            raise TransportError(
                f"{self.safe_url}: no answer from the broker within {timeout:g} s"
            ) from None
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed) as error:
            raise ConnectionFailed(f"{self.safe_url}: the connection was lost ({error})") from None

    def _soon(self, operation: Callable[[], None]) -> None:
        """Run ``operation`` on the I/O thread without waiting.

        Operations queue up and the I/O thread is woken once per batch, not once
        per publish or ack (each wake-up is a pipe write and a loop turn).
        """
        connection = self._connection
        if not self._open or connection is None:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")
        self._soon_queue.append(operation)
        if not self._soon_scheduled:
            self._soon_scheduled = True
            connection.ioloop.add_callback_threadsafe(self._run_soon)

    def _run_soon(self) -> None:
        # Cleared before draining: an operation queued after this sees it clear and
        # schedules another run; one queued before it is drained below.
        self._soon_scheduled = False
        while self._soon_queue:
            operation = self._soon_queue.popleft()
            try:
                operation()
            except Exception:
                log.exception("operation on the RabbitMQ I/O thread failed")

    def _open_channel(self, done: Confirmation, on_close: Callable | None = None) -> None:
        assert self._connection is not None

        def opened(channel: Channel) -> None:
            channel.add_on_close_callback(on_close or self._on_channel_closed)
            done.set_result(channel)

        self._connection.channel(on_open_callback=opened)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        log.debug("channel %s closed: %s", channel.channel_number, reason)

    def _open_publisher(self, done: Confirmation) -> None:
        def ready(channel: Channel) -> None:
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(
                self._on_confirm, callback=lambda frame: done.set_result(channel)
            )

        inner: Confirmation = Confirmation()
        inner.add_done_callback(
            lambda f: ready(f.result()) if not f.exception() else done.set_exception(f.exception())
        )
        self._open_channel(inner, on_close=self._on_publisher_closed)

    def _on_publisher_closed(self, channel: Channel, reason: BaseException) -> None:
        for batch, _, _ in list(self._unconfirmed.values()):
            if not batch.future.done():
                batch.future.set_exception(PublishFailed(f"publishing channel closed: {reason}"))
        self._unconfirmed.clear()
        connection = self._connection
        if self._open and connection is not None and connection.is_open:
            log.error("publishing channel closed (%s); reopening it", reason)
            self._sequence = 0
            reopened: Confirmation = Confirmation()
            reopened.add_done_callback(
                lambda f: setattr(self, "_publisher", f.result()) if not f.exception() else None
            )
            self._open_publisher(reopened)

    # -- declarations ---------------------------------------------------------
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
            self._open_channel(channel_ready, on_close=closed)

        return self._call(operation)

    def _exists(self, method: str, **arguments: Any) -> bool:
        try:
            self._rpc(method, probe=True, passive=True, **arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return False
            raise TransportError(f"{self.safe_url}: {method} {arguments}: {error}") from None
        return True

    def declare_queue(self, queue: str) -> None:
        """Make sure ``queue`` exists; a queue someone else declared is used as it is.

        A queue we create is a quorum queue dead-lettering to ``dlq.<queue>``
        after ``delivery_limit`` deliveries (which is also created).
        """
        if queue in self._known_queues:
            return
        if not self._exists("queue_declare", queue=queue):
            arguments: dict[str, Any] = {"x-queue-type": "quorum"}
            if not queue.startswith("dlq."):
                self.declare_queue(dlq_name(queue))
                arguments.update(
                    {
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": dlq_name(queue),
                        "x-delivery-limit": max(0, self.delivery_limit - 1),
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

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        """A classic queue bound to the topic's fanout exchange; RabbitMQ deletes it
        after ``expires`` seconds without a consumer (``x-expires``)."""
        self._declare_fanout(topic)
        self._bound_queues[queue] = (topic, expires)  # declared the same way if deleted
        arguments = {"x-queue-type": "classic", "x-expires": max(1, round(expires * 1000))}
        try:
            self._rpc("queue_declare", queue=queue, durable=True, arguments=arguments)
            self._rpc("queue_bind", queue=queue, exchange=topic, routing_key="")
        except pika.exceptions.ChannelClosedByBroker as error:
            raise TransportError(f"cannot bind queue {queue!r} to {topic!r}: {error}") from None

    def _declare_fanout(self, topic: str) -> None:
        if topic in self._known_exchanges:
            return
        if not self._exists("exchange_declare", exchange=topic):
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                self._rpc("exchange_declare", exchange=topic, exchange_type="fanout", durable=True)
        self._known_exchanges.add(topic)

    def _delay_target(self, queue: str, seconds: float) -> tuple[str, str, dict[str, Any]]:
        """(exchange, routing key, extra headers) that deliver to ``queue`` after ``seconds``."""
        if self._delay_route is None:
            if self._exists("exchange_declare", exchange=PLUGIN_DELAY_EXCHANGE):
                self._delay_route = "plugin"
            else:
                for kind, arguments in delays.topology():
                    method = {
                        "exchange": "exchange_declare",
                        "queue": "queue_declare",
                        "bind_queue": "queue_bind",
                        "bind_exchange": "exchange_bind",
                    }[kind]
                    self._rpc(method, **arguments)
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

    # -- consuming ----------------------------------------------------------
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> Subscription:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.declare_queue(queue)
        subscription = Subscription(
            self._next_subscription_id(), queue, callback, prefetch=prefetch
        )
        return self._consume(subscription, queue, prefetch)

    def subscribe_broadcast(self, topic: str, callback: Callback) -> Subscription:
        self._declare_fanout(topic)
        subscription = Subscription(self._next_subscription_id(), topic, callback, broadcast=True)
        return self._consume(subscription, "", 0, bind_to=topic)

    def _consume(
        self, subscription: Subscription, queue_name: str, prefetch: int, bind_to: str | None = None
    ) -> Subscription:
        """Open the subscription's own channel, set its prefetch and start consuming.

        A broadcast gets a server-named exclusive queue bound to the topic's
        fanout exchange, declared on that same channel.
        """
        consumer = _Consumer(
            subscription, queue=queue_name, source=queue_name, prefetch=prefetch, bind_to=bind_to
        )

        def operation(done: Confirmation) -> None:
            def opened(channel: Channel) -> None:
                consumer.channel = channel
                channel.add_on_cancel_callback(lambda frame: self._on_cancelled(consumer, frame))
                channel.basic_qos(
                    prefetch_count=prefetch, callback=lambda _: self._start(consumer, done)
                )

            def closed(channel: Channel, reason: BaseException) -> None:
                starting = consumer.starting or done
                if not starting.done():
                    starting.set_exception(
                        TransportError(f"cannot consume {subscription.describe()}: {reason}")
                    )

            channel_ready: Confirmation = Confirmation()
            channel_ready.add_done_callback(
                lambda f: (
                    opened(f.result()) if not f.exception() else done.set_exception(f.exception())
                )
            )
            self._open_channel(channel_ready, on_close=closed)

        with self._lock:
            self._consumers[subscription.id] = consumer
        try:
            return self._call(operation)
        except BaseException:
            with self._lock:
                self._consumers.pop(subscription.id, None)
            raise

    def _start(self, consumer: _Consumer, done: Confirmation) -> None:
        """On the I/O thread: consume on the consumer's channel (a broadcast first
        declares its server-named queue and binds it to the topic's exchange)."""
        channel, subscription = consumer.channel, consumer.subscription
        assert channel is not None
        consumer.starting = done

        def start(_: Any = None) -> None:
            consumer.tag = channel.basic_consume(
                consumer.queue,
                lambda ch, method, properties, body: self._on_message(
                    consumer, ch, method, properties, body
                ),
                auto_ack=subscription.broadcast,
                exclusive=consumer.bind_to is not None,
                callback=lambda frame: done.set_result(subscription),
            )

        def bind(frame: Any) -> None:
            consumer.queue = frame.method.queue
            channel.queue_bind(consumer.queue, consumer.bind_to, routing_key="", callback=start)

        if consumer.bind_to is not None:
            channel.queue_declare("", exclusive=True, auto_delete=True, callback=bind)
        else:
            start()

    def _on_cancelled(self, consumer: _Consumer, frame: Any) -> None:
        """The broker cancelled a consumer (its queue was deleted): consume it again.

        Without this the service would sit idle forever on a queue that no longer
        exists. The queue is declared again and consumed on the same channel, so
        deliveries in hand can still be settled. If that fails the transport's
        owner is told (:meth:`Transport.report_failure`): it should stop, with an
        error, for its supervisor to restart it.
        """
        if frame.method.consumer_tag != consumer.tag:
            return
        consumer.tag = ""  # nothing of ours to cancel any more
        if self._closing or not consumer.subscription.active:
            return
        log.warning(
            "RabbitMQ cancelled the consumer of %s (was the queue deleted?); "
            "declaring it again and resuming",
            consumer.subscription.describe(),
        )
        threading.Thread(
            target=self._resume, args=(consumer,), name="rabbitmq-resume", daemon=True
        ).start()

    def _resume(self, consumer: _Consumer) -> None:
        subscription = consumer.subscription
        try:
            if consumer.bind_to is not None:
                self._known_exchanges.discard(consumer.bind_to)
                self._declare_fanout(consumer.bind_to)
            elif consumer.source in self._bound_queues:
                topic, expires = self._bound_queues[consumer.source]
                self.bind_queue(consumer.source, topic, expires=expires)
            else:
                # Whatever we knew of it went with it.
                self._known_queues.discard(consumer.source)
                self._delay_bound.discard(consumer.source)
                self.declare_queue(consumer.source)

            def restart(done: Confirmation) -> None:
                # On the I/O thread, where unsubscribe acts too: never revive a
                # consumer that was unsubscribed while its queue was declared again.
                if not subscription.active or self._closing:
                    done.set_result(None)
                    return
                self._start(consumer, done)

            if self._call(restart) is None:
                return
        except (TransportError, TimeoutError, pika.exceptions.AMQPError) as error:
            if self._closing or not subscription.active:
                return
            self.report_failure(
                f"RabbitMQ cancelled the consumer of {subscription.describe()} and it "
                f"cannot be consumed again: {error}"
            )
            return
        log.warning("consuming %s again", subscription.describe())

    def _on_message(
        self,
        consumer: _Consumer,
        channel: Channel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        headers = from_amqp(properties.headers or {})
        count = int(headers.pop("x-delivery-count", 0) or 0)
        _translate_dead_letter(headers)
        tag = method.delivery_tag
        delivery = Delivery(
            subscription=consumer.subscription,
            message_id=properties.message_id or f"{consumer.subscription.id}:{tag}",
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

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            consumer = self._consumers.get(subscription.id)
        if consumer is None or not subscription.active or consumer.channel is None:
            raise TransportError(f"{subscription.describe()} is not subscribed")
        subscription.active = False
        channel = consumer.channel

        def cancel(done: Confirmation) -> None:
            if not channel.is_open or consumer.tag not in channel.consumer_tags:
                done.set_result(None)  # already cancelled (by the broker) or its channel gone
            else:
                channel.basic_cancel(consumer.tag, callback=done.set_result)

        self._call(cancel)
        if subscription.broadcast:
            self._soon(channel.close)
            with self._lock:
                self._consumers.pop(subscription.id, None)

    def _take(self, delivery: Delivery) -> tuple[Channel, int]:
        """Mark ``delivery`` settled here, or raise if it is not awaiting settlement."""
        if not self._open:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")
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

    def _untake(self, delivery: Delivery) -> None:
        """Undo :meth:`_take`: ``delivery`` awaits settlement again, if its channel lives."""
        channel, tag = delivery.receipt
        with self._lock:
            consumer = self._consumers.get(delivery.subscription.id)
            if consumer is not None and consumer.channel is channel and channel.is_open:
                consumer.unsettled.add(tag)

    def _ack(self, delivery: Delivery) -> None:
        channel, tag = self._take(delivery)
        self._soon(lambda: channel.basic_ack(tag) if channel.is_open else None)

    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        if not requeue:
            self._declare_dead_letter_queue(delivery.source)
        channel, tag = self._take(delivery)
        if requeue:
            self._soon(lambda: channel.basic_nack(tag, requeue=True) if channel.is_open else None)
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
        batch = _Batch(Confirmation(), [])

        def settle(done: Confirmation) -> None:
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

        batch.future.add_done_callback(lambda done: self._soon(lambda: settle(done)))
        route = (copy, "", copy.destination, {})
        self._soon(lambda: self._publish_now([copy], batch, [route]))

    def _declare_dead_letter_queue(self, queue: str) -> None:
        """Give a rejected message's copy somewhere to go: an operator's queue may have
        no ``dlq.<queue>``, and a copy the broker cannot route is no dead letter."""
        if threading.current_thread() is self._thread:
            return  # a declaration would wait on this very thread; a failed copy is logged
        try:
            self.declare_queue(dlq_name(queue))
        except ConnectionFailed:
            raise
        except TransportError as error:
            log.warning("cannot declare %r for a dead letter: %s", dlq_name(queue), error)

    # -- publishing ---------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        routes = [self._route(message) for message in messages]
        acks = deliveries_to_ack(ack)
        reserve_all_or_none(acks, self._take, self._untake)
        batch = _Batch(Confirmation(), acks)
        try:
            self._soon(lambda: self._publish_now(list(messages), batch, routes))
        except ConnectionFailed:
            for delivery in acks:
                self._untake(delivery)
            raise
        return batch.future

    def _route(self, message: Outgoing) -> tuple[Outgoing, str, str, dict[str, Any]]:
        """(message, exchange, routing key, extra headers), declaring what it needs."""
        self.check_supported(message)
        if not self._open:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")
        if message.broadcast:
            self._declare_fanout(message.destination)
            return message, message.destination, "", {}
        if message.delay:
            exchange, key, extra = self._delay_target(message.destination, message.delay)
            return message, exchange, key, extra
        return message, "", message.destination, {}

    def _publish_now(self, messages: list[Outgoing], batch: _Batch, routes: list) -> None:
        """On the I/O thread: publish every message of a batch, then wait for confirms."""
        publisher = self._publisher
        if publisher is None or not publisher.is_open:
            self._fail_batch(batch, "the publishing channel is not open")
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
            self._fail_batch(batch, f"cannot publish to {why}")

    def _publish_each(
        self, publisher: Channel, messages: list[Outgoing], batch: _Batch, routes: list
    ) -> None:
        for message, (_, exchange, routing_key, extra) in zip(messages, routes, strict=True):
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
                )
                publisher.basic_publish(
                    exchange, routing_key, message.body, properties, mandatory=not message.broadcast
                )
            except Exception as error:
                # pika encodes the whole frame before sending any of it: nothing of this
                # message reached the broker, so it takes no confirm sequence number.
                raise _Unpublishable(
                    f"{message.describe()}: {type(error).__name__}: {error}"
                ) from error
            # Recorded after the send: its confirm is handled on this same thread, later.
            self._sequence += 1
            self._unconfirmed[self._sequence] = (batch, message_id, message.describe())

    def _on_return(
        self, channel: Channel, method: Basic.Return, properties: BasicProperties, body: bytes
    ) -> None:
        returned = f"returned by the broker: {method.reply_code} {method.reply_text}"
        if method.reply_code == 312 and not method.exchange:  # NO_ROUTE, default exchange
            returned = (
                f"the queue does not exist ({returned}); create it by starting its "
                "service, or with zocalo.configure_rabbitmq"
            )
        else:
            returned += f" (exchange {method.exchange!r}, routing key {method.routing_key!r})"
        self._returned[properties.message_id or ""] = returned

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = [t for t in self._unconfirmed if t <= tag] if method.multiple else [tag]
        refused = isinstance(method, Basic.Nack)
        for number in sorted(tags):
            entry = self._unconfirmed.pop(number, None)
            if entry is None:
                continue
            batch, message_id, destination = entry
            returned = self._returned.pop(message_id, None)
            if refused:
                batch.failures.append(
                    (destination, "refused by the broker (basic.nack: queue full or unavailable)")
                )
            elif returned:
                batch.failures.append((destination, returned))
            batch.remaining -= 1
            if batch.remaining == 0:
                self._complete(batch)

    def _complete(self, batch: _Batch) -> None:
        if batch.failures:
            self._fail_batch(batch, _counted(batch.failures))
            return
        # An input whose channel closed meanwhile (its delivery tag belongs to a dead
        # channel, e.g. of a lost connection) cannot be acked any more: the broker
        # redelivers it. Then none is acked, as for any other failure of the batch.
        lost = [delivery for delivery in batch.acks if not delivery.receipt[0].is_open]
        if lost:
            self._fail_batch(
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

    def _fail_batch(self, batch: _Batch, why: str) -> None:
        # Not acked: give them back to the caller to nack, or the broker to redeliver.
        for delivery in batch.acks:
            self._untake(delivery)
        if not batch.future.done():
            batch.future.set_exception(PublishFailed(why))

    # -- the callback thread ------------------------------------------------
    def _dispatch(self) -> None:
        while (item := self._callbacks.get()) is not None:
            consumer, delivery = item
            self.hand_over(consumer.subscription, delivery)


def _counted(failures: list[tuple[str, str]]) -> str:
    """Each distinct failure once, with how many messages it hit (1000 sends to a
    missing queue are one sentence, not 1000)."""
    counts = collections.Counter(failures)
    return "; ".join(
        f"{destination} cannot take {f'{count} messages' if count > 1 else 'it'}: {why}"
        for (destination, why), count in counts.items()
    )


class _Unpublishable(Exception):
    """A message pika cannot encode (text: its destination and why)."""


def _cause(error: BaseException) -> BaseException:
    """The underlying error: pika wraps TLS and socket failures in errors with empty text."""
    while True:
        if getattr(error, "exceptions", None):
            error = error.exceptions[-1]  # type: ignore[attr-defined]
        elif isinstance(getattr(error, "exception", None), BaseException):
            error = error.exception  # type: ignore[attr-defined]
        elif error.args and isinstance(error.args[-1], BaseException):
            error = error.args[-1]
        else:
            return error


def _translate_dead_letter(headers: dict[str, Any]) -> None:
    """Describe a broker-dead-lettered message (``x-death``) in our DLQ header names.

    We never publish the broker's headers (they are stripped), so an
    ``x-death`` here tells what happened since we last published the message:
    its deaths join our own history header, which survives the next publish,
    and the latest dead-lettering is the reason. The delay topology's wait
    queues are hops, not history, and are left out.
    """
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return
    history = [
        death
        for death in deaths
        if isinstance(death, dict) and not str(death.get("queue", "")).startswith(delays.PREFIX)
    ]
    latest = next(
        (d for d in history if d.get("reason") in ("rejected", "delivery_limit", "maxlen")), None
    )
    if latest is None:
        return
    # x-death lists the most recent first; our history is oldest first.
    headers.update(
        dead_letter_marks(
            reason=f"{latest['reason']} (dead-lettered by RabbitMQ)",
            queue=str(latest.get("queue")),
            history=with_history(headers, *reversed(history)),
        )
    )
