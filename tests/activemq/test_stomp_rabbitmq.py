"""Services on RabbitMQ's STOMP plugin (the session's private node, ``rabbitmq_stomp``):
the runner's smoke tests there (the runner's own suite takes delays and reply queues for
granted, which the plugin lacks), and a restart mid-stream, after which the STOMP
transport reconnects as on ActiveMQ.

The restarted node is stopped cleanly (SIGTERM). After a SIGKILL, RabbitMQ 3.10.8 restarted within
seconds but left SUBSCRIBEs to the recovering quorum queues unanswered for over a minute
(measured), longer than a test should wait: that is the broker's recovery, not ours."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from stomp_helpers import PREFIX, Forward, start_recipe, unique

from zocalo.errors import UnsupportedFeature
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.transport import create_transport, dlq_name
from zocalo.transport.base import DLQ_REASON_HEADER, Outgoing

pytestmark = pytest.mark.stomp


@pytest.fixture
def url(rabbitmq_stomp: Any) -> str:
    return str(rabbitmq_stomp.url(prefix=PREFIX, vhost="/"))


@pytest.fixture
def run_service(
    url: str, start_service: Callable[..., ServiceRunner]
) -> Callable[..., ServiceRunner]:
    """``run_service(service, **settings)``: ``start_service`` on RabbitMQ's STOMP plugin."""
    return lambda service, **settings: start_service(service, url, **settings)


def two_steps(source: str) -> Recipe:
    return Recipe(
        {"1": {"queue": source, "output": 2}, "2": {"queue": f"{source}.out"}, "start": [[1, {}]]}
    )


def test_a_service_forwards_a_recipe(
    url: str, run_service: Callable[..., ServiceRunner], collector: Any, wait_until: Any
) -> None:
    source = unique("smoke")
    runner = run_service(Forward(source))
    with create_transport(url) as client:
        out = collector(ack_with=client)
        client.subscribe(f"{source}.out", out)
        start_recipe(client, two_steps(source), [{"n": n} for n in range(20)])
        received = out.wait_for_count(20)
        assert sorted(json.loads(d.body)["payload"]["n"] for d in received) == list(range(20))
        wait_until(lambda: runner.stats.handled == 20, "every message handled")


class ExclusiveForward(Service):
    def __init__(self, queue: str) -> None:
        super().__init__()
        self.add_handler(queue, self.forward, exclusive=True)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


def test_an_exclusive_handler_shares_its_queue_here_and_says_so(
    url: str, run_service: Callable[..., ServiceRunner], collector: Any, caplog: Any
) -> None:
    """The plugin cannot keep a queue to one consumer: the transport refuses an exclusive
    subscription, and the runner runs the service anyway, sharing the queue, with one
    warning (refusing would stop it, and its supervisor would restart it, forever)."""
    source = unique("exclusive")
    with create_transport(url) as client:
        with pytest.raises(UnsupportedFeature, match="use amqp://"):
            client.subscribe(source, print, exclusive=True)
        run_service(ExclusiveForward(source))
        assert "cannot keep queue" in caplog.text
        out = collector(ack_with=client)
        client.subscribe(f"{source}.out", out)
        start_recipe(client, two_steps(source), [{"n": 1}])
        out.wait_for_count(1)


def test_a_message_that_keeps_failing_is_dead_lettered(
    url: str, run_service: Callable[..., ServiceRunner], collector: Any
) -> None:
    """Retried at once (RabbitMQ has no delays over STOMP), then dead-lettered."""
    source = unique("poison")
    runner = run_service(Failing(source), max_attempts=2)
    with create_transport(url) as client:
        client.declare_queue(dlq_name(source))
        start_recipe(client, two_steps(source), [{"n": 1}])
        dead = collector(ack_with=client)
        client.subscribe(dlq_name(source), dead)
        [letter] = dead.wait_for_count(1, timeout=20)
        assert "not today" in letter.headers[DLQ_REASON_HEADER]
    assert (runner.stats.retried, runner.stats.dead_lettered) == (1, 1)


class Failing(Service):
    """Fails every message."""

    def __init__(self, queue: str) -> None:
        super().__init__()
        self.add_handler(queue, self.fail)

    def fail(self, step: RecipeStep, payload: Any) -> None:
        raise RuntimeError("not today")


@pytest.mark.slow
def test_a_rabbitmq_node_restart_mid_stream_loses_nothing(
    rabbitmq_stomp: Any, collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Its queues are quorum queues, which keep what they confirmed: after the restart
    every connection resubscribes and every message arrives (some twice: those whose
    ack the crash took)."""
    url = rabbitmq_stomp.url(prefix=PREFIX, vhost="/")
    source, prefetch, out_prefetch = unique("stream"), 10, 50
    runner = ServiceRunner(
        Forward(source, prefetch=prefetch), create_transport(url), RunnerSettings(retry_delay=0.05)
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    assert runner.started.wait(20)
    try:
        with create_transport(url) as client:
            out = collector(ack_with=client)
            client.subscribe(f"{source}.out", out, prefetch=out_prefetch)
            recipe = Recipe(
                {"1": {"queue": source, "output": 2}, "2": {"queue": f"{source}.out"}}
                | {"start": [[1, {}]]}
            )
            total = 400
            start_recipe(client, recipe, [{"n": n} for n in range(total)])
            out.wait_for_count(50, timeout=30)
            rabbitmq_stomp.stop()
            restarted = rabbitmq_stomp.start()
            duplicates = out.wait_for_every_number(total, "the restart")
            print(f"\nnode restart ({restarted:.1f}s): {total} messages, {duplicates} duplicates")
            assert duplicates <= prefetch + out_prefetch
            deadline = time.monotonic() + 60
            while not (runner.transport.connected and client.connected):
                assert time.monotonic() < deadline, "never reconnected"
                threading.Event().wait(0.05)
            assert any("reconnected to" in record.getMessage() for record in caplog.records)
    finally:
        runner.request_stop()
        thread.join(20)
    assert not thread.is_alive(), "the service did not stop"


def test_an_error_about_a_subscription_gone_fails_no_publish(
    url: str, collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """What the plugin was still delivering to a subscription when it was unsubscribed
    it answers with an ERROR naming no receipt ("Subscription not found"). Here every
    SEND carries a receipt of its own, so such an error is no publish's refusal: the
    publishes under way meanwhile succeed (failing them redelivered their inputs)."""
    caplog.set_level(logging.WARNING, logger="zocalo.transport.stomp.connection")
    elsewhere = unique("elsewhere")
    with create_transport(url) as client:
        for _ in range(30):
            queue = unique("gone")
            client.publish([Outgoing(queue, b"x") for _ in range(50)]).result(20)
            seen = collector(ack_with=client)
            subscription = client.subscribe(queue, seen, prefetch=50)
            seen.wait_for_count(1)
            client.unsubscribe(subscription)
            for _ in range(20):
                client.publish([Outgoing(elsewhere, b"y")]).result(20)
            if any("Subscription not found" in r.getMessage() for r in caplog.records):
                break
    errors = [r.getMessage() for r in caplog.records if "sent an error" in r.getMessage()]
    assert any("Subscription not found" in error for error in errors), errors
