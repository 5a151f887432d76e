"""RabbitMQ after a reconnect: what the lost connection took with it comes back. The
broker is reached through a proxy the test controls (:mod:`tcp_proxy`), so a
connection can be cut. (What every broker's reconnect does, a close during an
attempt and the growing delays, is tested in ``tests/transport/test_reconnect.py``.)"""

from __future__ import annotations

import gc
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pika
import pytest
import requests

from rabbit_broker import CREDENTIALS, MANAGEMENT
from tcp_proxy import Proxy
from zocalo.errors import ConnectionFailed, PublishFailed
from zocalo.transport import Confirmation, Outgoing, create_transport, dlq_name, reply_queue_name

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    proxy = Proxy()
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_url(rabbitmq_vhost_url: str, proxy: Proxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}{urlsplit(rabbitmq_vhost_url).path}?timeout=2"


def test_a_reply_queue_comes_back_after_a_reconnect(
    rabbitmq_vhost_url, proxied_url, proxy, collector, wait_until, caplog
):
    """RabbitMQ deletes an exclusive queue with its connection: after a reconnect the
    caller's reply queue is declared again, empty, and consumed, and replies reach it."""
    caller = create_transport(proxied_url)
    caller.connect()
    try:
        queue = reply_queue_name()
        caller.declare_reply_queue(queue)
        received = collector(ack_with=caller)
        caller.subscribe(queue, received)
        proxy.drop()
        wait_until(
            lambda: any("reconnected to" in r.getMessage() for r in caplog.records),
            "the reconnect",
            30,
        )
        with create_transport(rabbitmq_vhost_url) as worker:
            worker.publish([Outgoing(queue, b"after", droppable=True)]).result(10)
        assert received.wait_for_body(b"after", timeout=20)[-1].body == b"after"
    finally:
        caller.close()


class _AtTheFailedAttempt(logging.Handler):
    """Runs ``action`` on the reconnecting thread as it logs an attempt failed on ``queue``
    (before the attempt is abandoned: its connection is still open)."""

    def __init__(self, queue: str, action: Callable[[], None]) -> None:
        super().__init__()
        self.queue, self.action, self.done = queue, action, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "failed (attempt" in message and self.queue in message and not self.done.is_set():
            self.action()
            self.done.set()


def test_a_failed_restore_drops_its_connection_and_nothing_is_lost(
    rabbitmq_vhost_url, proxied_url, proxy, operator, collector, wait_until, caplog
):
    """A reconnect attempt opens a connection, but cannot restore a subscription (during
    the outage an operator replaced its queue with an exclusive queue of their own
    connection, which ours cannot declare). As the attempt fails, a message of the
    other queue has been delivered on its connection, and a publish awaits the
    broker's confirm there. The attempt drops that connection: the delivery goes back to
    its queue and comes again after the reconnect, the publish is answered (failed,
    unless its confirm came first), and the subscription that failed is restored once
    the operator's queue is gone (declared again). The connection used to stay open,
    unread, until the broker's heartbeat timeout (60-90 s): holding the delivery, taking
    new messages of its queue, the publish waiting for ever; and the failed subscription
    was forgotten."""
    caller = create_transport(proxied_url)
    caller.connect()
    kept, deleted = (f"restore.{uuid.uuid4().hex[:8]}" for _ in range(2))
    kept_received, deleted_received = collector(), collector(ack_with=caller)
    published: list[Confirmation] = []

    def as_the_attempt_fails() -> None:
        kept_received.wait_for_body(b"waiting", timeout=10)  # delivered on its connection
        proxy.set_mode("refuse")  # the next attempts wait for the queue to be back
        published.append(caller.publish([Outgoing(kept, b"published meanwhile")]))

    at_failure = _AtTheFailedAttempt(deleted, as_the_attempt_fails)
    logging.getLogger("zocalo.transport.rabbitmq.connection").addHandler(at_failure)
    try:
        caller.subscribe(kept, kept_received, prefetch=10)
        caller.subscribe(deleted, deleted_received)
        proxy.outage()
        operator.basic_publish("", kept, b"waiting")
        operator.queue_delete(deleted)
        operator.queue_declare(deleted, exclusive=True)
        proxy.set_mode("forward")
        assert at_failure.done.wait(30), "no attempt failed restoring the deleted queue"

        assert proxy.wait(lambda p: p.forwarded == 0, timeout=10), (
            "the failed attempt's connection is still open"
        )
        assert futures.wait(published, timeout=10).done, "the publish was never answered"
        failed = published[0].exception()  # (its confirm may have come before the drop)
        assert failed is None or isinstance(failed, PublishFailed), failed

        operator.queue_delete(deleted)  # the next attempt declares it again
        proxy.set_mode("forward")
        wait_until(lambda: caller.connected, "the reconnect", 30)
        assert messages(caplog, "2 subscription(s) restored")
        kept_received.wait_until(
            lambda deliveries: [d.body for d in deliveries].count(b"waiting") == 2,
            "the delivery made on the dropped connection, again",
            20,
        )
        with create_transport(rabbitmq_vhost_url) as sender:
            sender.send(kept, b"after")
            sender.send(deleted, b"after")
        kept_received.wait_for_body(b"after", timeout=20)
        deleted_received.wait_for_body(b"after", timeout=20)
        if failed is None:
            assert b"published meanwhile" in kept_received.bodies
    finally:
        logging.getLogger("zocalo.transport.rabbitmq.connection").removeHandler(at_failure)
        caller.close()


def test_a_queue_deleted_during_an_outage_is_declared_again(
    rabbitmq_vhost_url, proxied_url, proxy, operator, collector, wait_until, caplog
):
    """The queue of a subscription, and its dead-letter queue, are deleted while the
    connection is down: the reconnect declares both again, as subscribe() did (a quorum
    queue dead-lettering to ``dlq.<queue>``), and consumes. As when the broker cancels
    a consumer whose queue was deleted while connected. Each attempt used to fail on
    the missing queue (404), every few seconds for ever, the service never consuming."""
    queue = f"restore.{uuid.uuid4().hex[:8]}"
    with create_transport(proxied_url) as caller:
        received = collector(ack_with=caller)
        caller.subscribe(queue, received)
        proxy.outage()
        operator.queue_delete(queue)
        operator.queue_delete(dlq_name(queue))
        proxy.set_mode("forward")
        wait_until(lambda: caller.connected, "the reconnect", 20)
        assert messages(caplog, "1 subscription(s) restored")

        declared = queue_info(rabbitmq_vhost_url, queue)
        assert declared["type"] == "quorum"
        assert declared["arguments"]["x-dead-letter-routing-key"] == dlq_name(queue)
        assert queue_info(rabbitmq_vhost_url, dlq_name(queue))["type"] == "quorum"
        with create_transport(rabbitmq_vhost_url) as sender:
            sender.send(queue, b"after")
        received.wait_for_body(b"after", timeout=20)


def test_a_handshake_that_times_out_leaves_no_socket_open(rabbitmq_vhost_url, proxy):
    """The proxy accepts the connection and never answers: connect() gives up, and the
    socket it opened is closed. It stayed open (a half-open connection at the broker per
    attempt, a reconnect making one every few seconds) until a garbage collection found
    it: collections are off here, so only the transport can close it."""
    path = urlsplit(rabbitmq_vhost_url).path
    transport = create_transport(f"amqp://guest:guest@127.0.0.1:{proxy.port}{path}?timeout=0.5")
    proxy.set_mode("hold")
    gc.disable()
    try:
        with pytest.raises(ConnectionFailed, match="TimeoutError"):
            transport.connect()
        assert proxy.held == 1
        assert proxy.clients_open() == 0, "the unanswered connection's socket is still open"
    finally:
        gc.enable()
        transport.close()


def test_a_connection_lost_while_connect_opens_its_channels_leaves_nothing_behind(
    rabbitmq_vhost_url, proxied_url, proxy, collector, caplog
):
    """The connection is cut as connect() opens its first channel: connect() fails, and
    nothing reconnects behind it. A reconnect used to start as connect() raised, and
    opened a connection beside the one the caller's next connect() opened (one of the
    two orphaned: close() closed the other)."""
    transport = create_transport(proxied_url)
    proxy.cut_when_client_sends(pika.frame.Method(1, pika.spec.Channel.Open()).marshal())
    try:
        with pytest.raises(ConnectionFailed):
            transport.connect()
        assert proxy.cut == 1
        transport.connect()
        queue = f"restore.{uuid.uuid4().hex[:8]}"
        received = collector(ack_with=transport)
        transport.subscribe(queue, received)
        with create_transport(rabbitmq_vhost_url) as sender:
            sender.send(queue, b"after")
        received.wait_for_body(b"after", timeout=20)
    finally:
        transport.close()
    assert proxy.wait(lambda p: p.forwarded == 0, timeout=10), "a connection is left open"
    assert proxy.accepted == 2, f"{proxy.accepted} connections for two connect() calls"
    assert not messages(caplog, "reconnected to")


def queue_info(vhost_url: str, queue: str) -> dict[str, Any]:
    """What the management API says of ``queue`` (type, arguments...)."""
    vhost = quote(unquote(urlsplit(vhost_url).path[1:]), safe="")
    answer = requests.get(
        f"{MANAGEMENT}/queues/{vhost}/{quote(queue, safe='')}", auth=CREDENTIALS, timeout=10
    )
    answer.raise_for_status()
    return answer.json()


def messages(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if containing in r.getMessage()]
