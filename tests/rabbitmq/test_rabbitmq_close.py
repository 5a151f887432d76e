"""RabbitMQ connection life cycle on failure paths: close during a reconnect, and
reconnecting after a close and a new connect. The broker is reached through a
proxy the test controls (:mod:`tcp_proxy`), so a connection can be cut and a
reconnect attempt caught mid-handshake."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from tcp_proxy import Proxy

from zocalo.transport import Outgoing, create_transport, reply_queue_name

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    proxy = Proxy()
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_url(rabbitmq_vhost_url: str, proxy: Proxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}{urlsplit(rabbitmq_vhost_url).path}?timeout=2"


def test_a_close_during_a_reconnect_is_not_undone(proxied_url, proxy, collector, caplog):
    transport = create_transport(proxied_url)
    transport.connect()
    transport.subscribe(f"close.{uuid.uuid4().hex[:8]}", collector())
    proxy.set_mode("hold")
    proxy.drop()
    assert proxy.wait(lambda p: p.held == 1), "no reconnect attempt came"

    transport.close()  # while the reconnect attempt waits for the broker's answer
    proxy.set_mode("forward")  # the attempt's connection now reaches the broker, if it lives
    assert proxy.wait(lambda p: p.forwarded == 0, timeout=10), (
        "the reconnect went on after close(): a connection to the broker is open"
    )
    assert not transport.connected
    assert not any("reconnected to" in record.getMessage() for record in caplog.records)


def test_connect_after_close_reconnects_as_often_as_it_takes(
    rabbitmq_vhost_url, proxied_url, proxy, collector, caplog, wait_until
):
    transport = create_transport(proxied_url)
    transport.connect()
    transport.close()
    transport.connect()
    try:
        queue = f"close.{uuid.uuid4().hex[:8]}"
        received = collector(ack_with=transport)
        transport.subscribe(queue, received)
        proxy.set_mode("refuse")
        proxy.drop()
        wait_until(
            lambda: any("failed (attempt 1)" in r.getMessage() for r in caplog.records),
            "a failed reconnect attempt",
        )
        proxy.set_mode("forward")
        wait_until(lambda: transport.connected, "the reconnect after the failed attempt", 30)
        with create_transport(rabbitmq_vhost_url) as sender:
            sender.send(queue, b"after the reconnect")
        received.wait_for_body(b"after the reconnect", timeout=20)
    finally:
        transport.close()


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
