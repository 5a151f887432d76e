"""Reconnecting after a loss (``zocalo.transport.reconnect``), on each broker server.

The transport reaches its broker through a proxy the test controls
(:mod:`tcp_proxy`), so its connection can be cut, its reconnect attempts refused,
and an attempt caught mid-handshake.
"""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from tcp_proxy import Proxy
from zocalo.transport import Transport, create_transport
from zocalo.transport.reconnect import RECONNECT_FIRST_DELAY, Reconnecting

#: Seconds the transport waits for the broker: a STOMP attempt waits that long for
#: its CONNECTED frame, and these tests forward a held attempt well within it.
TIMEOUT = 3


@pytest.fixture
def proxy(server_url: str) -> Iterator[Proxy]:
    parts = urlsplit(server_url)
    proxy = Proxy((parts.hostname or "", parts.port or 0))
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_url(server_url: str, proxy: Proxy) -> str:
    """``server_url``, reaching the broker through ``proxy``."""
    parts = urlsplit(server_url)
    netloc = f"{parts.netloc.rsplit(':', 1)[0]}:{proxy.port}"
    query = "&".join(filter(None, (parts.query, f"timeout={TIMEOUT}")))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def connection_of(transport: Transport) -> Reconnecting:
    """The transport's broker connection (whose ``closing`` nothing else shows)."""
    connection = getattr(transport, "_connection", None) or getattr(transport, "_link", None)
    assert isinstance(connection, Reconnecting), connection
    return connection


def messages(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if containing in r.getMessage()]


def subscribed(url: str, collector) -> Transport:
    transport = create_transport(url)
    transport.connect()
    transport.subscribe(f"reconnect.{uuid.uuid4().hex[:8]}", collector())
    return transport


def test_a_close_during_a_reconnect_attempt_is_not_undone(proxied_url, proxy, collector, caplog):
    """The attempt waits for the broker's answer when close() comes: it ends there."""
    transport = subscribed(proxied_url, collector)
    proxy.set_mode("hold")
    proxy.drop()
    assert proxy.wait(lambda p: p.held == 1), "no reconnect attempt came"

    transport.close()  # while the reconnect attempt waits for the broker's answer
    proxy.set_mode("forward")  # the attempt's connection now reaches the broker, if it lives
    assert proxy.wait(lambda p: p.forwarded == 0 and p.held == 0, timeout=10), (
        "the reconnect went on after close(): a connection to the broker is open"
    )
    assert not transport.connected
    assert not messages(caplog, "reconnected to")


def test_an_attempt_answered_after_close_shuts_what_it_opened(
    proxied_url, proxy, collector, caplog, wait_until
):
    """close() comes while an attempt waits, and the broker answers the attempt before
    close() has ended: the attempt restores nothing and closes its connection."""
    transport = subscribed(proxied_url, collector)
    proxy.set_mode("hold")
    proxy.drop()
    assert proxy.wait(lambda p: p.held == 1), "no reconnect attempt came"

    closing = threading.Thread(target=transport.close, name="test-close")
    closing.start()
    wait_until(lambda: connection_of(transport).closing, "close() to begin")
    proxy.set_mode("forward")  # the broker now answers the attempt under way
    closing.join(TIMEOUT + 20)
    assert not closing.is_alive(), "close() did not end"
    assert proxy.wait(lambda p: p.forwarded == 0 and p.held == 0, timeout=10), (
        "the reconnect went on after close(): a connection to the broker is open"
    )
    assert not transport.connected
    assert not messages(caplog, "reconnected to")


def test_reconnect_attempts_wait_longer_each_time_until_one_succeeds(
    server_url, proxied_url, proxy, collector, caplog, wait_until
):
    """Refused attempts come at once, then after 0.5 s, 1 s, 2 s ...: each failure says
    when the next comes, and the next does not come sooner. After a close and a new
    connect too (a close stops reconnects; the new connection's go on as long as needed)."""
    transport = create_transport(proxied_url)
    transport.connect()
    transport.close()
    transport.connect()
    try:
        queue = f"reconnect.{uuid.uuid4().hex[:8]}"
        received = collector(ack_with=transport)
        transport.subscribe(queue, received)
        proxy.outage()
        wait_until(
            lambda: len(messages(caplog, "failed (attempt")) >= 3, "three failed attempts", 30
        )
        proxy.set_mode("forward")
        failures = [r for r in caplog.records if "failed (attempt" in r.getMessage()][:3]
        announced = [float(*re.findall(r"try in ([\d.]+) s", r.getMessage())) for r in failures]
        first = RECONNECT_FIRST_DELAY
        assert announced == [first, 2 * first, 4 * first], [r.getMessage() for r in failures]
        for (earlier, later), pause in zip(itertools.pairwise(failures), announced, strict=False):
            assert later.created - earlier.created >= pause * 0.95, (earlier.msg, later.msg)

        wait_until(lambda: transport.connected, "the reconnect after the failed attempts", 30)
        assert messages(caplog, "reconnected to")
        with create_transport(server_url) as sender:
            sender.send(queue, b"after the reconnect")
        received.wait_for_body(b"after the reconnect", timeout=20)
    finally:
        transport.close()


#: The first frame a client writes once the broker accepted its connection: pika opens
#: its publishing channel (number 1), stomp.py restores the first subscription.
FIRST_FRAME = {
    "amqp": pika.frame.Method(1, pika.spec.Channel.Open()).marshal(),
    "stomp": b"SUBSCRIBE\n",
}


@pytest.mark.parametrize("moment", ["after the handshake", "between the subscriptions"])
def test_a_connection_lost_while_restoring_fails_that_attempt_only(
    server_url, proxied_url, proxy, collector, caplog, wait_until, moment
):
    """The connection an attempt opened is cut before it has restored everything (the
    frame that would have gone on never reaches the broker): that attempt fails at once,
    and the next restores both subscriptions. One thread reconnects throughout: the loss
    started a second one, which raced the first (each dropping what the other opened),
    and on RabbitMQ the first waited 30 s for an answer on the lost connection."""
    transport = create_transport(proxied_url)
    transport.connect()
    try:
        first, second = (f"reconnect.{uuid.uuid4().hex[:8]}" for _ in range(2))
        received = collector(ack_with=transport)
        transport.subscribe(first, received)
        transport.subscribe(second, received)
        cut_on = second.encode() if moment == "between the subscriptions" else None
        proxy.cut_when_client_sends(cut_on or FIRST_FRAME[urlsplit(server_url).scheme])
        proxy.drop()
        wait_until(lambda: messages(caplog, "reconnected to"), "the reconnect", 20)
        assert proxy.cut == 1
        reconnecting = connection_of(transport).thread_name
        wait_until(
            lambda: not any(t.name == reconnecting for t in threading.enumerate()),
            "no thread left reconnecting",
            5,
        )
        failures = messages(caplog, "failed (attempt")
        assert len(failures) == 1 and "no answer" not in failures[0], failures
        assert len(messages(caplog, "reconnected to")) == 1
        assert transport.connected
        with create_transport(server_url) as sender:
            sender.send(first, b"to the first")
            sender.send(second, b"to the second")
        received.wait_for_body(b"to the first", timeout=20)
        received.wait_for_body(b"to the second", timeout=20)
    finally:
        transport.close()
