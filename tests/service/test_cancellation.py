"""Cancelled recipes: what they left in the queues is acked and dropped, in every service.

A cancellation reaches a running service at once, on every transport, and one
that starts later through the broker's kept broadcasts, where the broker keeps
them (memory, SQLite, RabbitMQ; ActiveMQ refuses, and its services say so at
start). What a service dropped is counted, logged once per message, and
acknowledged (nothing of it comes back once the service stops). Recipe IDs are
unique per test: the RabbitMQ vhost and the ActiveMQ broker last the session.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from transport_params import transports
from zocalo.recipe import Recipe
from zocalo.recipe.cancel import CANCEL_TOPIC, CANCEL_WINDOW, broadcast_cancel, cancel_message
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import encode
from zocalo.service import Middleware, Service, ServiceRunner
from zocalo.service.middleware import CANCELLED, DropCancelled
from zocalo.service.runner import STOPPED_MARK
from zocalo.transport import Outgoing, Transport, create_transport
from zocalo.transport.base import Capability

#: Seconds the messages of the running-service test wait in their queue (delayed),
#: while the service hears the cancellation; a handful of milliseconds is enough.
QUEUED_FOR = 2.0

#: The transports whose brokers keep broadcasts (``Capability.KEPT_BROADCASTS``): a
#: service that starts after a cancellation hears it there only.
KEEPING = transports("memory", "sqlite", "rabbitmq")


@pytest.fixture
def broker_url(each_transport_url: str) -> str:
    return each_transport_url


@pytest.fixture
def work(client: Transport) -> str:
    queue = f"cancel.{uuid.uuid4().hex[:10]}"
    for name in (queue, f"{queue}.out"):
        client.declare_queue(name)
    return queue


@pytest.fixture
def recipe_ids() -> Callable[[str], str]:
    tag = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{tag}"


def send(
    client: Transport, queue: str, recipe_id: str, payload: Any, delay: float | None = None
) -> None:
    """A two-step job of recipe ``recipe_id``: ``queue`` -> ``<queue>.out``."""
    recipe = Recipe(
        {"1": {"queue": queue, "output": 2}, "2": {"queue": f"{queue}.out"}, "start": [[1, 0]]}
    )
    body = encode(recipe, 1, [], {"ID": recipe_id}, payload)
    client.send(queue, body, headers={"workflows-recipe": True}, delay=delay)


def sink(client: Transport, queue: str, collector: Callable[..., Any]) -> Any:
    received = collector(ack_with=client)
    client.subscribe(queue, received, prefetch=100)
    return received


def payloads(deliveries: list[Any]) -> list[Any]:
    return [json.loads(delivery.body)["payload"] for delivery in deliveries]


class Forward(Service):
    """Passes payloads on; ``sees_cancelled`` handlers record what they were told."""

    def __init__(self, queue: str, *, sees_cancelled: bool = False) -> None:
        super().__init__()
        self.seen: list[tuple[Any, bool]] = []
        self.add_handler(queue, self.forward, prefetch=5, sees_cancelled=sees_cancelled)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        self.seen.append((payload, step.cancelled))
        step.send(payload)


def dropper(runner: ServiceRunner) -> DropCancelled:
    (found,) = [m for m in runner.middleware if isinstance(m, DropCancelled)]
    return found


def left_in(client: Transport, queue: str, collector: Callable[..., Any]) -> list[Any]:
    """What ``queue`` still holds (none of it in flight): read up to a sentinel sent last."""
    client.send(queue, b'"sentinel"')
    received = collector(ack_with=client)
    subscription = client.subscribe(queue, received, prefetch=100)
    deliveries = received.wait_for_body(b'"sentinel"')
    client.unsubscribe(subscription)
    return [delivery.body for delivery in deliveries if delivery.body != b'"sentinel"']


def test_a_running_service_drops_what_a_cancelled_recipe_left_in_its_queue(
    client, work, collector, start_service, recipe_ids, wait_until, caplog
):
    """Messages queued before the cancellation (delayed, as a retry or a poll waits)
    are acked and dropped, one line each; another recipe's flow on."""
    cancelled, other = recipe_ids("cancelled"), recipe_ids("other")
    service = Forward(work)
    runner = start_service(service)
    out = sink(client, f"{work}.out", collector)
    send(client, work, other, "first through", delay=0.01)  # (RabbitMQ: delays declared)
    assert payloads(out.wait_for_count(1)) == ["first through"]
    queued_at = time.monotonic()
    send(client, work, cancelled, "first", delay=QUEUED_FOR)
    send(client, work, cancelled, "second", delay=QUEUED_FOR)
    send(client, work, other, "flows", delay=QUEUED_FOR)
    with caplog.at_level(logging.INFO, logger="zocalo.service.middleware.cancellation"):
        broadcast_cancel(client, cancelled)
        wait_until(lambda: cancelled in dropper(runner).cancelled, "the cancellation heard")
        took = time.monotonic() - queued_at
        assert took < QUEUED_FOR, f"heard after {took:.1f} s, too late to tell: run again"
        assert payloads(out.wait_for_count(2))[1] == "flows"
        wait_until(lambda: runner.stats.cancelled == 2, "both dropped")
    assert [payload for payload, _ in service.seen] == ["first through", "flows"]
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping")]
    assert len(dropped) == 2
    assert all(line.endswith(f": recipe {cancelled} was cancelled") for line in dropped)
    assert f"recipe {cancelled} was cancelled: its messages are dropped" in caplog.text
    runner.request_stop()  # what it had not acknowledged would now return to the queue
    wait_until(lambda: not runner.transport.connected, "the service to stop")
    assert left_in(client, work, collector) == [], "dropped means acknowledged"
    assert len(out.deliveries) == 2


def cancel_while_running(client: Transport, runner: ServiceRunner, recipe_id: str) -> None:
    """Cancel ``recipe_id`` and wait until the running service has heard it."""
    broadcast_cancel(client, recipe_id)
    deadline = time.monotonic() + 10
    while recipe_id not in dropper(runner).cancelled:
        assert time.monotonic() < deadline, "the service never heard the cancellation"
        threading.Event().wait(0.01)


@pytest.mark.parametrize("each_transport_url", KEEPING, indirect=True)
def test_a_service_started_after_the_cancellation_still_drops_the_recipes_messages(
    broker_url, client, work, collector, start_service, recipe_ids
):
    """The service was down when the recipe was cancelled: the broker kept the
    cancellation, and the first messages of the backlog are judged with it known."""
    cancelled, other = recipe_ids("cancelled"), recipe_ids("other")
    for n in range(3):
        send(client, work, cancelled, f"cancelled {n}")
    send(client, work, other, "flows")
    broadcast_cancel(client, cancelled)
    with create_transport(broker_url) as elsewhere:  # said before the service ever ran
        broadcast_cancel(elsewhere, recipe_ids("another"))
    out = sink(client, f"{work}.out", collector)
    service = Forward(work)
    runner = start_service(service)
    assert payloads(out.wait_for_count(1)) == ["flows"]
    send(client, work, cancelled, "sent after the start")
    send(client, work, other, "sentinel")
    assert payloads(out.wait_for_count(2)) == ["flows", "sentinel"]
    assert [payload for payload, _ in service.seen] == ["flows", "sentinel"]
    assert runner.stats.snapshot()["cancelled"] == 4
    assert set(dropper(runner).cancelled) == {cancelled, recipe_ids("another")}


@pytest.mark.parametrize("each_transport_url", KEEPING, indirect=True)
def test_a_long_record_of_cancellations_is_read_before_the_first_message(
    client, work, collector, start_service, recipe_ids
):
    """The runner reads the whole replay before its handlers subscribe: the backlog's
    first message, of the last recipe cancelled, is judged with it known."""
    many = [recipe_ids(f"cancelled-{n}") for n in range(300)]
    client.keep_broadcasts(CANCEL_TOPIC, seconds=CANCEL_WINDOW)
    kept = [Outgoing(CANCEL_TOPIC, cancel_message(r).encode(), {}, True) for r in many]
    client.publish(kept).result(30)
    send(client, work, many[-1], "dropped")
    send(client, work, recipe_ids("other"), "flows")
    out = sink(client, f"{work}.out", collector)
    runner = start_service(Forward(work))
    assert payloads(out.wait_for_count(1)) == ["flows"]
    assert runner.stats.snapshot()["cancelled"] == 1


@pytest.mark.parametrize("each_transport_url", KEEPING, indirect=True)
def test_a_cancellation_older_than_the_window_is_forgotten(
    client, work, collector, start_service, recipe_ids
):
    long_ago, recent = recipe_ids("long-ago"), recipe_ids("recent")
    client.keep_broadcasts(CANCEL_TOPIC, seconds=CANCEL_WINDOW)
    client.broadcast(CANCEL_TOPIC, cancel_message(long_ago, at=time.time() - CANCEL_WINDOW - 1))
    client.broadcast(CANCEL_TOPIC, cancel_message(recent, at=time.time() - CANCEL_WINDOW + 60))
    send(client, work, long_ago, "flows: its cancellation has run out")
    send(client, work, recent, "dropped")
    send(client, work, long_ago, "sentinel")
    out = sink(client, f"{work}.out", collector)
    runner = start_service(Forward(work))
    assert payloads(out.wait_for_count(2)) == ["flows: its cancellation has run out", "sentinel"]
    assert runner.stats.snapshot()["cancelled"] == 1


def test_a_handler_that_sees_cancelled_recipes_is_told(
    client, work, collector, start_service, recipe_ids
):
    cancelled, other = recipe_ids("cancelled"), recipe_ids("other")
    out = sink(client, f"{work}.out", collector)
    service = Forward(work, sees_cancelled=True)
    runner = start_service(service)
    cancel_while_running(client, runner, cancelled)
    send(client, work, cancelled, "cleans up")
    send(client, work, other, "as usual")
    out.wait_for_count(2)
    assert service.seen == [("cleans up", True), ("as usual", False)]
    assert runner.stats.snapshot()["cancelled"] == 0


def test_the_outcome_is_cancelled_for_every_after_message_hook(
    client, work, collector, start_service, recipe_ids
):
    """Metrics and other ``after_message`` hooks count a dropped message as ``cancelled``;
    the handler never ran."""
    cancelled = recipe_ids("cancelled")
    outcomes: list[str] = []

    class Outcomes(Middleware):
        def after_message(self, runner, message, outcome, seconds):
            outcomes.append(outcome)

    out = sink(client, f"{work}.out", collector)
    runner = start_service(Forward(work), middleware=[Outcomes()])
    cancel_while_running(client, runner, cancelled)
    send(client, work, cancelled, "dropped")
    send(client, work, recipe_ids("other"), "handled")
    out.wait_for_count(1)
    assert outcomes == [CANCELLED, "handled"]


def test_a_broker_that_keeps_no_broadcasts_costs_only_what_was_said_before_the_start(
    broker_url, client, work, collector, start_service, recipe_ids, caplog
):
    """Where the transport refuses to keep broadcasts (ActiveMQ), the service says so
    at start, in one line, and drops what is cancelled while it runs."""
    cancelled = recipe_ids("cancelled")
    out = sink(client, f"{work}.out", collector)
    with caplog.at_level(logging.INFO, logger="zocalo.service.middleware.cancellation"):
        runner = start_service(Forward(work))
    kept = Capability.KEPT_BROADCASTS in client.capabilities
    warnings = [r.getMessage() for r in caplog.records if "are not heard" in r.getMessage()]
    assert len(warnings) == (0 if kept else 1), warnings
    cancel_while_running(client, runner, cancelled)
    send(client, work, cancelled, "dropped")
    send(client, work, recipe_ids("other"), "flows")
    assert payloads(out.wait_for_count(1)) == ["flows"]
    assert runner.stats.snapshot()["cancelled"] == 1


# -- zocalo cancel and zocalo.service, as an operator runs them -------------------------


def test_zocalo_cancel_reaches_a_zocalo_service_down_or_running(
    supervised, sqlite_broker, collector, wait_until, tmp_path: Path, recipe_ids
):
    """Sent while the service is down, and again while it runs: each cancelled recipe's
    messages are dropped, with one line each, and counted in its final stats."""
    queue = "fleet.work"  # fleet_services:Passthrough's (the broker file is this test's)
    before, during, other = recipe_ids("before"), recipe_ids("during"), recipe_ids("other")
    log_file = tmp_path / "service.log"
    with create_transport(sqlite_broker) as client:
        client.declare_queue(f"{queue}.out")
        send(client, queue, before, "queued, then cancelled")
        send(client, queue, other, "flows")
        cancel = [str(Path(sys.executable).parent / "zocalo"), "cancel", "-t", sqlite_broker]
        subprocess.run([*cancel, before], check=True, timeout=60)
        out = sink(client, f"{queue}.out", collector)
        with log_file.open("wb") as log:
            service = supervised("fleet_services:Passthrough", stderr=log)
            assert payloads(out.wait_for_count(1, timeout=60)) == ["flows"]
            subprocess.run([*cancel, during], check=True, timeout=60)
            wait_until(
                lambda: f"recipe {during} was cancelled" in log_file.read_text(),
                "the running service to hear the cancellation",
                60,
            )
            send(client, queue, during, "sent after its cancellation")
            send(client, queue, other, "sentinel")
            assert payloads(out.wait_for_count(2, timeout=60))[1] == "sentinel"
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(60)
        text = log_file.read_text()
    assert text.count("dropping ") == 2
    assert f": recipe {before} was cancelled" in text
    assert f": recipe {during} was cancelled" in text
    stopped = [line for line in text.splitlines() if STOPPED_MARK in line][-1]
    stats = json.loads(stopped.split(STOPPED_MARK, 1)[1])
    assert (stats["cancelled"], stats["handled"]) == (2, 2)
