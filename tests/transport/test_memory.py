"""Behaviour of the in-memory transport beyond the shared contract (URL options, sharing)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from zocalo.errors import TransportError, UnsupportedFeature
from zocalo.transport import Capability, Delivery, Outgoing, Transport, create_transport, dlq_name
from zocalo.transport.base import DLQ_HISTORY_HEADER
from zocalo.transport.memory import MemoryTransport

DEADLINE = 5.0
CONFIRM_DELAY = 0.3


@pytest.fixture
def memory() -> Iterator[Callable[..., Transport]]:
    """``memory(query="", broker=None, **options)``: a connected memory transport.

    Connections made with the same ``broker`` label share one broker; by default
    each test gets its own. All are closed at teardown.
    """
    opened: list[Transport] = []
    test_broker = f"memory-test-{uuid.uuid4().hex}"

    def open_connection(query: str = "", broker: str | None = None, **options: object) -> Transport:
        url = f"memory://{broker or test_broker}" + (f"?{query}" if query else "")
        transport = create_transport(url, **options)
        opened.append(transport)
        transport.connect()
        return transport

    yield open_connection
    for transport in reversed(opened):
        transport.close()


def test_url_selects_memory_with_every_feature_but_cross_process(
    memory: Callable[..., Transport],
) -> None:
    transport = memory()
    assert isinstance(transport, MemoryTransport)
    assert transport.capabilities == {
        Capability.DELAY,
        Capability.PRIORITY,
        Capability.EXPIRATION,
        Capability.DELIVERY_COUNT,
        Capability.DEAD_LETTER,
        Capability.REPLY_QUEUE,
        Capability.KEPT_BROADCASTS,
        Capability.EXCLUSIVE,
    }
    with pytest.raises(UnsupportedFeature, match="delayed-broadcast"):
        transport.broadcast("topic", b"x", delay=1.0)


def test_connections_share_a_broker_by_name_only(
    memory: Callable[..., Transport], collector: Callable
) -> None:
    one, same, other = memory(broker="shared-a"), memory(broker="shared-a"), memory()
    one.send("q", b"hello")
    assert same.depth("q") == 1
    assert other.depth("q") == 0
    received = collector(ack_with=same)
    same.subscribe("q", received)
    assert received.wait_for_count(1)[0].body == b"hello"


def test_confirm_delay_publish_returns_before_confirmation(
    memory: Callable[..., Transport], collector: Callable
) -> None:
    worker = memory(f"confirm_delay={CONFIRM_DELAY}")
    worker.publish([Outgoing("in", b"input")]).result(DEADLINE)
    received = collector()
    worker.subscribe("in", received)
    [delivery] = received.wait_for_count(1)

    start = time.monotonic()
    confirmation = worker.publish([Outgoing("out", b"result")], ack=delivery)
    returned = time.monotonic() - start
    # Nothing is visible, and the input is still ours, until the broker confirms.
    assert returned < CONFIRM_DELAY
    assert not confirmation.done()
    assert worker.depth("out") == 0
    stats = {entry.queue: entry for entry in worker.queue_stats()}
    assert stats["in"].in_flight == 1

    assert confirmation.result(DEADLINE) is None
    assert time.monotonic() - start >= CONFIRM_DELAY
    assert worker.depth("out") == 1
    with pytest.raises(TransportError):
        worker.ack(delivery)  # the confirmed publish acked it


def test_confirm_delay_pipelines_publishes_in_order(memory: Callable[..., Transport]) -> None:
    transport = memory(f"confirm_delay={CONFIRM_DELAY}")
    start = time.monotonic()
    confirmations = [transport.publish([Outgoing("q", f"{i}".encode())]) for i in range(10)]
    finished: list[int] = []  # done callbacks run on the one confirming thread
    for index, confirmation in enumerate(confirmations):
        confirmation.add_done_callback(lambda _, index=index: finished.append(index))
    for confirmation in confirmations:
        confirmation.result(DEADLINE)
    elapsed = time.monotonic() - start
    assert finished == list(range(10))
    assert elapsed < 5 * CONFIRM_DELAY  # overlapping, not 10 delays one after another
    assert transport.depth("q") == 10


def test_confirm_delay_failure_is_reported_by_the_confirmation(
    memory: Callable[..., Transport], collector: Callable
) -> None:
    transport = memory(f"confirm_delay={CONFIRM_DELAY}")
    transport.send("in", b"input")
    received = collector()
    transport.subscribe("in", received)
    [delivery] = received.wait_for_count(1)
    transport.ack(delivery)

    confirmation = transport.publish([Outgoing("out", b"result")], ack=delivery)
    assert isinstance(confirmation.exception(DEADLINE), TransportError)
    assert transport.depth("out") == 0


@pytest.mark.parametrize(
    ("query", "options", "limit"),
    [("delivery_limit=2", {}, 2), ("", {"delivery_limit": 3}, 3), ("", {}, 5)],
)
def test_delivery_limit_option(
    memory: Callable[..., Transport],
    collector: Callable,
    query: str,
    options: dict[str, int],
    limit: int,
) -> None:
    transport = memory(query, **options)
    assert transport.delivery_limit == limit
    transport.send("q", b"poison")
    received = collector()
    transport.subscribe("q", received)
    for count in range(1, limit + 1):
        delivery = received.wait_for_count(count)[-1]
        assert delivery.delivery_count == count
        transport.nack(delivery, requeue=True, reason="no")
    dead = collector(ack_with=transport)
    transport.subscribe(dlq_name("q"), dead)
    [letter] = dead.wait_for_count(1)
    assert len(letter.headers[DLQ_HISTORY_HEADER]) == limit


def test_callback_that_raises_returns_the_delivery(
    memory: Callable[..., Transport], collector: Callable
) -> None:
    transport = memory()
    received = collector()

    def fail_once(delivery: Delivery) -> None:
        received(delivery)
        if not delivery.redelivered:
            raise RuntimeError("callback failed")
        transport.ack(delivery)

    transport.subscribe("q", fail_once)
    transport.send("q", b"x")
    first, second = received.wait_for_count(2)
    assert (first.redelivered, second.redelivered) == (False, True)
    assert second.delivery_count == 2


def test_every_plain_standby_says_it_took_over(
    memory: Callable[..., Transport], collector: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    """Two plain consumers stand by behind an exclusive one; once it has gone, each says it
    consumes: the first to look forgets the holder, and the other, still standing by,
    looks again rather than taking unannounced."""
    caplog.set_level(logging.INFO, logger="zocalo.transport")
    holder, first, second = memory(), memory(), memory()
    holder.subscribe("q", collector(), exclusive=True)
    standbys = [collector(), collector()]
    first.subscribe("q", standbys[0])  # prefetch 1, never acked: one message each
    second.subscribe("q", standbys[1])
    assert logged(caplog, "standing by on queue 'q'") == 2

    holder.close()
    first.send("q", b"m1")
    first.send("q", b"m2")
    for standby in standbys:
        standby.wait_for_count(1)  # each has looked since: it logs before it takes
    assert logged(caplog, "took over queue 'q'") == 2


def logged(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(words in record.getMessage() for record in caplog.records)
