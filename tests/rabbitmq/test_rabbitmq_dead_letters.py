"""RabbitMQ: delays through dead-lettering wait queues, dead letters and poison loops.

Without the delayed-message plugin a delay is a trip through TTL wait queues
that dead-letter to each other. RabbitMQ drops a message, silently, when it
is dead-lettered into a queue its ``x-death`` names with no rejection between
(cycle detection), so nothing we publish may carry the broker's own headers.
Queues an operator declared may have no ``dlq.<queue>``: dead letters must
still land somewhere, never loop and never vanish without a trace.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zocalo.errors import TransportError
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import encode
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.service.middleware import DEAD_LETTERED, Middleware, default_middleware
from zocalo.service.middleware.base import ATTEMPT_HEADER
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


class AlwaysFailing(Service):
    """Fails on every message of its queue; counts the deliveries it was given."""

    def __init__(self, queue: str) -> None:
        super().__init__()
        self.calls = 0
        self.lock = threading.Lock()
        self.add_handler(queue, self.fail, prefetch=5)

    def fail(self, step: RecipeStep, payload: Any) -> None:
        with self.lock:
            self.calls += 1
        raise RuntimeError("always broken")


def test_a_service_on_an_operators_queue_without_dlq_dead_letters_without_a_hot_loop(
    rabbitmq_vhost_url, amqp, operator, collector
):
    queue = unique("operator")
    operator.queue_declare(queue, durable=True)  # classic, no dead-letter exchange, no dlq
    service = AlwaysFailing(queue)
    dead_lettered = threading.Semaphore(0)

    class CountDeadLetters(Middleware):
        def after_message(self, runner, message, outcome, seconds):
            if outcome == DEAD_LETTERED:
                dead_lettered.release()

    runner = ServiceRunner(
        service,
        create_transport(rabbitmq_vhost_url),
        RunnerSettings(max_attempts=3, retry_delay=0.03),
        middleware=[*default_middleware(), CountDeadLetters()],
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    recipe = Recipe({"1": {"queue": queue}, "start": [[1, {}]]})
    try:
        assert runner.started.wait(20)
        # The second message is a sentinel: by the time it is dead-lettered, a loop
        # of the first would have shown in the count of deliveries.
        for number in (1, 2):
            amqp.send(
                queue,
                encode(recipe, 1, [], {"ID": f"poison-{number}"}, {}),
                headers={"workflows-recipe": True},
            )
            assert dead_lettered.acquire(timeout=20), f"message {number} never dead-lettered"
    finally:
        runner.request_stop()
        thread.join(20)
    assert not thread.is_alive()
    assert service.calls == 6, f"{service.calls} deliveries of two messages: a poison loop"
    assert runner.stats.snapshot()["dead_lettered"] == 2
    letters = collector(ack_with=amqp)
    amqp.subscribe(f"dlq.{queue}", letters)
    letters.wait_for_count(2)
    for number, letter in enumerate(letters.deliveries, 1):
        headers = letter.headers
        assert "RuntimeError: always broken (after 3 attempts)" in headers[DLQ_REASON_HEADER]
        assert headers[DLQ_QUEUE_HEADER] == queue
        assert headers[ATTEMPT_HEADER] == 2
        assert len(headers[DLQ_HISTORY_HEADER]) == 3
        assert json.loads(letter.body)["environment"] == {"ID": f"poison-{number}"}


def test_a_reject_on_an_operators_queue_without_dlq_lands_in_a_dlq(amqp, operator, collector):
    queue = unique("reject")
    operator.queue_declare(queue, durable=True)  # no dead-letter exchange: a reject discards
    received = collector()
    amqp.subscribe(queue, received)
    amqp.send(queue, b"poison")
    (delivery,) = received.wait_for_count(1)
    amqp.nack(delivery, requeue=False, reason="cannot parse")
    letters = collector(ack_with=amqp)
    amqp.subscribe(f"dlq.{queue}", letters)
    (letter,) = letters.wait_for_count(1)
    assert letter.body == b"poison"
    assert letter.headers[DLQ_REASON_HEADER] == "cannot parse"
    assert amqp.dead_letter_copies_failed == 0


def test_a_reject_whose_copy_is_refused_is_logged_and_counted(
    amqp, operator, collector, wait_until, caplog
):
    queue = unique("refused")
    operator.queue_declare(queue, durable=True)
    operator.queue_declare(
        f"dlq.{queue}", durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    received = collector()
    amqp.subscribe(queue, received)
    amqp.send(queue, b"poison")
    (delivery,) = received.wait_for_count(1)
    amqp.nack(delivery, requeue=False, reason="cannot parse")
    wait_until(lambda: amqp.dead_letter_copies_failed == 1, "the failed copy counted")
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert delivery.message_id in line.getMessage()
    assert f"dlq.{queue}" in line.getMessage() and "discards" in line.getMessage()


def test_a_service_that_cannot_declare_its_dlq_stops_with_a_clear_error(
    rabbitmq_vhost_url, amqp, operator, collector, caplog
):
    queue = unique("locked")
    operator.queue_declare(queue, durable=True)
    # Another connection's exclusive queue: RabbitMQ refuses us even a passive declaration.
    operator.queue_declare(f"dlq.{queue}", exclusive=True)
    service = AlwaysFailing(queue)
    runner = ServiceRunner(service, create_transport(rabbitmq_vhost_url), RunnerSettings())
    failures: list[TransportError] = []

    def run() -> None:
        try:
            runner.run()
        except TransportError as error:  # the worker exits non-zero: its supervisor restarts it
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert runner.started.wait(20)
        amqp.send(queue, b"{}", headers={"workflows-recipe": True})
        thread.join(20)
        assert not thread.is_alive(), "the service goes on failing instead of stopping"
        assert len(failures) == 1 and f"dlq.{queue}" in str(failures[0]), "an error, not a stop"
    finally:
        runner.request_stop()
        thread.join(20)
    (line,) = [r.getMessage() for r in caplog.records if "cannot dead-letter" in r.getMessage()]
    assert f"dlq.{queue}" in line and "stopping the service" in line
    assert runner.stats.snapshot()["dead_lettered"] == 0
    back = collector(ack_with=amqp)
    amqp.subscribe(queue, back)
    assert back.wait_for_count(1)[0].body == b"{}", "the message is back in its queue"
