"""A queue deleted under a running service (by an operator or configure_rabbitmq).

RabbitMQ cancels the consumers of a deleted queue (basic.cancel). The service
must notice: declare the queue again and go on consuming, or, when it cannot,
stop with an error for its supervisor to restart it. Either way stopping it
must not hang on a cancel the broker already made.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from zocalo.errors import TransportError
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.transport import create_transport

pytestmark = pytest.mark.rabbitmq
API = "http://127.0.0.1:15672/api"


class Forward(Service):
    def __init__(self, queue: str) -> None:
        super().__init__()
        self.add_handler(queue, self.forward, prefetch=5)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


def started(runner: ServiceRunner) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``runner`` on a thread; the list receives what run() raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, name="test-runner", daemon=True)
    thread.start()
    assert runner.started.wait(20), "the service did not start"
    return thread, raised


def send_job(client, queue: str, n: int) -> None:
    step = RecipeStep()
    recipe = {"1": {"queue": queue, "output": 2}, "2": {"queue": f"{queue}.out"}}
    step.start(Recipe({**recipe, "start": [[1, {"n": n}]]}))
    client.publish(step.outputs).result(30)


def test_a_deleted_queue_is_declared_again_and_consumed(
    rabbitmq_vhost_url, operator, collector, caplog, wait_until
):
    source = f"deleted.{uuid.uuid4().hex[:8]}"
    with create_transport(rabbitmq_vhost_url) as client:
        out = collector(ack_with=client)
        client.subscribe(f"{source}.out", out)
        runner = ServiceRunner(Forward(source), create_transport(rabbitmq_vhost_url))
        thread, raised = started(runner)
        send_job(client, source, 1)
        out.wait_for_count(1, timeout=20)

        operator.queue_delete(source)
        wait_until(
            lambda: any(
                f"consuming queue '{source}' again" in r.getMessage() for r in caplog.records
            ),
            "the service to consume its queue again",
        )
        assert any(
            "cancelled the consumer of" in r.getMessage() and source in r.getMessage()
            for r in caplog.records
        )
        send_job(client, source, 2)
        received = out.wait_for_count(2, timeout=20)
        assert [json.loads(d.body)["payload"]["n"] for d in received] == [1, 2]

        runner.request_stop()
        thread.join(10)  # a cancel waiting for an answer that never comes took 30 s
        assert not thread.is_alive(), "stopping the service hung"
        assert not raised


def test_a_deleted_queue_that_cannot_be_declared_again_stops_the_service_with_an_error(
    restricted_user, operator, caplog
):
    source = f"deleted.{uuid.uuid4().hex[:8]}"
    operator.queue_declare(source, durable=True)  # declared by the operator, used as it is
    runner = ServiceRunner(Forward(source), create_transport(restricted_user), RunnerSettings())
    thread, raised = started(runner)
    operator.queue_delete(source)
    thread.join(20)
    assert not thread.is_alive(), "the service went on idling on a queue that is gone"
    assert len(raised) == 1 and isinstance(raised[0], TransportError), raised
    assert source in str(raised[0]) and "cannot be consumed again" in str(raised[0])


def test_a_deleted_command_queue_is_bound_again_as_it_was(
    rabbitmq_vhost_url, operator, collector, caplog, wait_until
):
    """A supervisor's command queue (bind_queue) comes back as a queue bound to its
    topic, not as an ordinary work queue: commands broadcast afterwards still arrive."""
    queue, topic = f"zocalo.command.test.{uuid.uuid4().hex[:8]}", f"t.{uuid.uuid4().hex[:8]}"
    with (
        create_transport(rabbitmq_vhost_url) as listener,
        create_transport(rabbitmq_vhost_url) as sender,
    ):
        commands = collector(ack_with=listener)
        listener.bind_queue(queue, topic, expires=60)
        listener.subscribe(queue, commands)
        operator.queue_delete(queue)
        wait_until(
            lambda: any(
                f"consuming queue '{queue}' again" in r.getMessage() for r in caplog.records
            ),
            "the command queue to be consumed again",
        )
        sender.broadcast(topic, b"stop")
        assert commands.wait_for_count(1, timeout=20)[0].body == b"stop"
    vhost = requests.utils.quote(unquote(urlsplit(rabbitmq_vhost_url).path[1:]), safe="")
    response = requests.get(f"{API}/queues/{vhost}/{queue}", auth=("guest", "guest"), timeout=30)
    assert response.json()["type"] == "classic" and "x-expires" in response.json()["arguments"]
