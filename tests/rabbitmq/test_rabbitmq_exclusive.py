"""Exclusive consumers on RabbitMQ beyond the contract: beside a consumer that is not
ours (python-zocalo's JSONLines consumes with ``basic.consume(exclusive=True)`` and no
lock), on both kinds of queue, and a holder cut off from the broker."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import pytest

from tcp_proxy import Proxy
from zocalo.transport import create_transport

pytestmark = pytest.mark.rabbitmq

DEADLINE = 10.0


def wait_for_log(caplog: pytest.LogCaptureFixture, words: str, count: int = 1) -> None:
    deadline = time.monotonic() + DEADLINE
    pause = threading.Event()
    while caplog_count(caplog, words) < count:
        assert time.monotonic() < deadline, f"no {count} log line(s) with {words!r}"
        pause.wait(0.01)


def caplog_count(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(words in r.getMessage() for r in caplog.records)


@pytest.fixture
def broker_url(rabbitmq_vhost_url: str) -> str:
    """The session's RabbitMQ vhost (``client`` connects to it)."""
    return rabbitmq_vhost_url


@pytest.mark.parametrize("kind", ["quorum", "classic"])
def test_ours_stands_by_beside_a_foreign_exclusive_consumer(client, collector, caplog, kind):
    """A quorum queue (ours) does not enforce consumer exclusivity: ours sees the foreign
    consumer; a classic queue refuses ours (ACCESS_REFUSED): either way it stands by,
    and takes over, with what the foreign one held, when it goes."""
    caplog.set_level(logging.INFO, logger="zocalo.transport")
    queue = f"exclusive.{kind}.{uuid.uuid4().hex[:8]}"
    theirs = pika.BlockingConnection(client.parameters)  # type: ignore[attr-defined]
    try:
        channel = theirs.channel()
        if kind == "classic":
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
        else:
            client.declare_queue(queue)
        held: list[bytes] = []
        channel.basic_qos(prefetch_count=100)
        channel.basic_consume(queue, lambda ch, m, p, body: held.append(body), exclusive=True)

        standby = collector(ack_with=client)
        client.subscribe(queue, standby, prefetch=10, exclusive=True)
        wait_for_log(caplog, "standing by")
        client.send(queue, b"m0")
        deadline = time.monotonic() + DEADLINE
        while not held:
            assert time.monotonic() < deadline, "the foreign consumer never got m0"
            theirs.process_data_events(time_limit=0.05)
        assert held == [b"m0"] and standby.bodies == []
    finally:
        theirs.close()  # m0 was never acknowledged: it returns, to ours

    deliveries = standby.wait_for_body(b"m0", timeout=DEADLINE)
    assert [(d.body, d.redelivered) for d in deliveries] == [(b"m0", True)]
    wait_for_log(caplog, "took over")


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    proxy = Proxy()
    yield proxy
    proxy.close()


def test_a_holder_cut_off_hands_over_and_stands_by_once_back(
    rabbitmq_vhost_url, proxy, client, collector, caplog
):
    """Its network lost, the holder's lock goes with its connection: the standby takes
    over with what it held; the holder reconnects as a standby, not a second holder."""
    caplog.set_level(logging.INFO, logger="zocalo.transport")
    queue = f"exclusive.cut.{uuid.uuid4().hex[:8]}"
    path = urlsplit(rabbitmq_vhost_url).path
    holder = create_transport(f"amqp://guest:guest@127.0.0.1:{proxy.port}{path}?timeout=2")
    holder.connect()
    try:
        held = collector()
        holder.subscribe(queue, held, prefetch=10, exclusive=True)
        standby = collector(ack_with=client)
        client.subscribe(queue, standby, prefetch=10, exclusive=True)
        wait_for_log(caplog, "standing by")
        client.send(queue, b"m0")
        held.wait_for_body(b"m0")

        proxy.set_mode("hold")  # the holder's reconnect waits: the standby goes first
        proxy.drop()
        deliveries = standby.wait_for_body(b"m0", timeout=DEADLINE)
        assert [(d.body, d.redelivered) for d in deliveries] == [(b"m0", True)]
        proxy.set_mode("forward")
        wait_for_log(caplog, "standing by", count=2)  # the holder, back
        client.send(queue, b"m1")
        standby.wait_for_body(b"m1")
        assert held.bodies == [b"m0"]
        # One line each, not one per refused try (pika warns of every channel closed).
        assert caplog_count(caplog, "standing by") == 2
        assert not [r for r in caplog.records if r.name == "pika.channel" and r.levelno >= 30]
    finally:
        holder.close()
