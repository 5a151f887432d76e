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
        proxy.set_mode("refuse")
        proxy.drop()
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
