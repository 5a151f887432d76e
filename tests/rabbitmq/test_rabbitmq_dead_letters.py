"""RabbitMQ: delays through dead-lettering wait queues, dead letters and poison loops.

Without the delayed-message plugin a delay is a trip through TTL wait queues
that dead-letter to each other. RabbitMQ drops a message, silently, when it
is dead-lettered into a queue its ``x-death`` names with no rejection between
(cycle detection), so nothing we publish may carry the broker's own headers.
Queues an operator declared may have no ``dlq.<queue>``: dead letters must
still land somewhere, never loop and never vanish without a trace.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest

from zocalo.transport import Transport, create_transport
from zocalo.transport.base import DLQ_HISTORY_HEADER, DLQ_QUEUE_HEADER, DLQ_REASON_HEADER

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def connect(rabbitmq_vhost_url: str) -> Iterator[Callable[..., Transport]]:
    """``connect(**options)``: a connected transport on the session's vhost, closed after."""
    opened: list[Transport] = []

    def open_connection(**options: Any) -> Transport:
        transport = create_transport(rabbitmq_vhost_url, **options)
        transport.connect()
        opened.append(transport)
        return transport

    yield open_connection
    for transport in reversed(opened):
        transport.close()


@pytest.fixture
def amqp(connect: Callable[..., Transport]) -> Transport:
    return connect()


@pytest.fixture
def operator(rabbitmq_vhost_url: str) -> Iterator[Any]:
    """A plain pika channel, to declare queues as an operator's tooling would."""
    parts = urlsplit(rabbitmq_vhost_url)
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            parts.hostname,
            parts.port,
            unquote(parts.path[1:]),
            pika.PlainCredentials("guest", "guest"),
        )
    )
    yield connection.channel()
    connection.close()


def unique(label: str) -> str:
    return f"dead-letters.{label}.{uuid.uuid4().hex[:8]}"


def test_a_message_delayed_again_with_its_headers_arrives_every_time(amqp, collector):
    """Every delayed publish leaves out x-death: else the second trip is dropped."""
    queue = unique("later")
    amqp.declare_queue(queue)
    received = collector(ack_with=amqp)
    amqp.subscribe(queue, received)
    amqp.send(queue, b"trip 1", headers={"mine": "kept"}, delay=0.03)
    (first,) = received.wait_for_count(1)
    assert "x-death" in first.headers, "the trip went through the wait queues"
    # 60 ms passes wait queues the 30 ms trip passed: they are in its x-death.
    amqp.send(queue, b"trip 2", headers=first.headers, delay=0.06)
    second = received.wait_for_count(2)[1]
    assert (second.body, second.headers["mine"]) == (b"trip 2", "kept")
    amqp.send(queue, b"trip 3", headers=second.headers, delay=0.06)
    assert received.wait_for_count(3)[2].body == b"trip 3"


def test_a_broker_dead_letter_keeps_its_history_in_our_headers_when_sent_on(connect, collector):
    limited = connect(delivery_limit=2)
    queue = unique("limited")
    limited.declare_queue(queue)
    limited.send(queue, b"poison")
    received = collector()
    limited.subscribe(queue, received)
    for count in (1, 2):
        limited.nack(received.wait_for_count(count)[-1], requeue=True, reason="crash")
    dead = collector(ack_with=limited)
    limited.subscribe(f"dlq.{queue}", dead)
    (letter,) = dead.wait_for_count(1)
    assert "x-death" in letter.headers, "RabbitMQ dead-lettered it itself"
    assert "delivery_limit" in letter.headers[DLQ_REASON_HEADER]

    # A tool sends it on with the headers it received (for a look, a reinjection).
    again = unique("again")
    limited.declare_queue(again)
    sent_on = collector(ack_with=limited)
    limited.subscribe(again, sent_on)
    limited.send(again, letter.body, headers=letter.headers)
    (copy,) = sent_on.wait_for_count(1)
    assert not [name for name in copy.headers if "death" in name], "no broker headers"
    (death,) = copy.headers[DLQ_HISTORY_HEADER]
    assert (death["queue"], death["reason"]) == (queue, "delivery_limit")
    assert copy.headers[DLQ_QUEUE_HEADER] == queue
