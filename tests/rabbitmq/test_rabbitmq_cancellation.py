"""Cancellations on a RabbitMQ whose services may declare nothing (an operator did).

The kept cancellations live in the stream ``zocalo.kept.zocalo.cancel``, bound to
the ``zocalo.cancel`` exchange. Declared by an operator (``configure_rabbitmq``),
a service whose user may declare nothing uses it as it is; missing, such a service
still starts and works, with one line saying it hears no cancellations.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

import pytest

from zocalo.recipe import Recipe
from zocalo.recipe.cancel import CANCEL_TOPIC, broadcast_cancel
from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, ServiceRunner
from zocalo.transport import create_transport
from zocalo.transport.rabbitmq.topology import kept_stream

pytestmark = pytest.mark.rabbitmq


class Forward(Service):
    def __init__(self, queue: str) -> None:
        super().__init__()
        self.add_handler(queue, self.forward)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


def send(client, queue: str, recipe_id: str, payload: Any) -> None:
    step = RecipeStep()
    recipe = {"1": {"queue": queue, "output": 2}, "2": {"queue": f"{queue}.out"}}
    step.start(Recipe({**recipe, "start": [[1, payload]]}), environment={"ID": recipe_id})
    client.publish(step.outputs).result(30)


def run(runner: ServiceRunner) -> threading.Thread:
    thread = threading.Thread(target=runner.run, name="test-runner", daemon=True)
    thread.start()
    assert runner.started.wait(30), "the service did not start"
    return thread


def test_an_operators_stream_serves_a_service_that_may_declare_nothing(
    rabbitmq_vhost_url, restricted_user, operator, collector
):
    operator.exchange_declare(CANCEL_TOPIC, exchange_type="fanout", durable=True)
    operator.queue_declare(
        kept_stream(CANCEL_TOPIC),
        durable=True,
        arguments={"x-queue-type": "stream", "x-max-age": "7D"},
    )
    operator.queue_bind(kept_stream(CANCEL_TOPIC), CANCEL_TOPIC)
    queue, cancelled = f"restricted.{uuid.uuid4().hex[:8]}", f"cancelled-{uuid.uuid4().hex}"
    with create_transport(rabbitmq_vhost_url) as client:
        client.declare_queue(queue)
        client.declare_queue(f"{queue}.out")
        out = collector(ack_with=client)
        client.subscribe(f"{queue}.out", out)
        with create_transport(restricted_user) as canceller:
            broadcast_cancel(canceller, cancelled)
        send(client, queue, cancelled, "dropped")
        send(client, queue, "another", "flows")
        runner = ServiceRunner(Forward(queue), create_transport(restricted_user))
        thread = run(runner)
        try:
            [delivery] = out.wait_for_count(1, timeout=20)
            assert json.loads(delivery.body)["payload"] == "flows"
            assert runner.stats.snapshot()["cancelled"] == 1
        finally:
            runner.request_stop()
            thread.join(10)


def test_without_it_such_a_service_starts_and_says_it_hears_no_cancellations(
    restricted_user, operator, collector, caplog
):
    operator.queue_delete(kept_stream(CANCEL_TOPIC))  # (another test may have made it)
    operator.exchange_delete(CANCEL_TOPIC)
    queue = f"restricted.{uuid.uuid4().hex[:8]}"
    operator.queue_declare(queue, durable=True)
    operator.queue_declare(f"{queue}.out", durable=True)
    with create_transport(restricted_user) as client:
        out = collector(ack_with=client)
        client.subscribe(f"{queue}.out", out)
        runner = ServiceRunner(Forward(queue), create_transport(restricted_user))
        with caplog.at_level(logging.WARNING):
            thread = run(runner)
        try:
            send(client, queue, "a-recipe", "flows")
            assert json.loads(out.wait_for_count(1, timeout=20)[0].body)["payload"] == "flows"
        finally:
            runner.request_stop()
            thread.join(10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert [line for line in errors if "cannot hear cancellations" in line], errors
