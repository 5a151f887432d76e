"""Runner middleware: the hook points, a facility's own middleware, and each shipped one.

Every test runs on each transport (memory hands deliveries to the runner's
thread; SQLite and RabbitMQ have the handler called on their callback
thread). Queue names are unique per test: RabbitMQ's vhost lasts the session.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from zocalo.errors import InvalidMessage
from zocalo.logs import RecipeContextFilter, recipe_id_var
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import encode
from zocalo.service import Middleware, RunnerSettings, Service, ServiceRunner
from zocalo.service.middleware import (
    DEAD_LETTERED,
    HANDLED,
    RETRIED,
    InHand,
    Runner,
    default_middleware,
)
from zocalo.service.middleware.memory_limit import MemoryLimit, resident_mib
from zocalo.service.middleware.time_limit import TimeLimit
from zocalo.transport import Transport, create_transport
from zocalo.transport.base import DLQ_REASON_HEADER, Outgoing

ENVIRONMENT = {"ID": "recipe-0042"}
MIB = 1024 * 1024


@pytest.fixture
def broker_url(each_transport_url: str) -> str:
    """Every test here runs on each transport (this overrides the memory-only default)."""
    return each_transport_url


@pytest.fixture
def work(client: Transport) -> str:
    """A queue of this test's own, and its output queue, declared."""
    queue = f"middleware.{uuid.uuid4().hex[:10]}"
    for name in (queue, f"{queue}.out"):
        client.declare_queue(name)
    return queue


def send(client: Transport, queue: str, value: Any) -> None:
    """A two-step job: ``queue`` -> ``<queue>.out``."""
    recipe = Recipe(
        {"1": {"queue": queue, "output": 2}, "2": {"queue": f"{queue}.out"}, "start": [[1, 0]]}
    )
    body = encode(recipe, 1, [], ENVIRONMENT, value)
    client.send(queue, body, headers={"workflows-recipe": True})


def sink(client: Transport, queue: str, collector: Callable[..., Any]) -> Any:
    received = collector(ack_with=client)
    client.subscribe(queue, received, prefetch=100)
    return received


def payloads(deliveries: list[Any]) -> list[Any]:
    return [json.loads(delivery.body)["payload"] for delivery in deliveries]


class Flaky(Service):
    """Passes payloads on; raises the first ``fail`` times it sees a payload ``"flaky"``."""

    def __init__(self, queue: str, fail: int = 1, error: type[Exception] = RuntimeError) -> None:
        super().__init__()
        self.fail, self.error = fail, error
        self.calls: list[Any] = []
        self.events: list[tuple[Any, ...]] | None = None
        self.add_handler(queue, self.forward, prefetch=5)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        self.calls.append(payload)
        if self.events is not None:
            self.events.append(("handler", payload))
        if payload == "flaky" and self.fail > 0:
            self.fail -= 1
            raise self.error("not today")
        step.send(payload)


class Recorder(Middleware):
    """Records every hook point it passes, with what it saw there."""

    def __init__(self, events: list[tuple[Any, ...]], name: str = "recorder") -> None:
        self.events, self.name = events, name

    def on_start(self, runner: Runner) -> None:
        self.events.append(("start", self.name))

    def before_message(self, runner: Runner, message: InHand) -> None:
        step = message.step
        payload = json.loads(message.delivery.body)["payload"] if step is not None else None
        self.events.append(("before", self.name, payload, step is None, message.attempt))

    def on_failure(self, runner: Runner, message: InHand, error: Exception) -> str | None:
        failure = type(error).__name__, message.attempt, recipe_id_var.get()
        self.events.append(("failure", self.name, *failure))
        return None

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        assert seconds > 0
        self.events.append(("after", self.name, outcome))

    def on_stop(self, runner: Runner) -> None:
        self.events.append(("stop", self.name))


def start(
    service: Service,
    url: str,
    middleware: list[Middleware] | None = None,
    **settings: Any,
) -> tuple[ServiceRunner, threading.Thread, list[BaseException]]:
    """Run ``service`` on a thread; what ``run()`` raised lands in the returned list."""
    runner = ServiceRunner(service, create_transport(url), RunnerSettings(**settings), middleware)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert runner.started.wait(10)
    return runner, thread, raised


@pytest.fixture
def running() -> Any:
    """``running(runner, thread)``: stopped at the end of the test, whatever happened."""
    started: list[tuple[ServiceRunner, threading.Thread]] = []
    yield lambda runner, thread: started.append((runner, thread))
    for runner, thread in started:
        runner.request_stop()
        thread.join(10)
        assert not thread.is_alive()


def test_a_custom_middleware_sees_every_hook_point_in_order(
    broker_url, client, work, collector, running
):
    """A facility's middleware, put before the defaults, sees a handled message, a
    failure that is then retried and an invalid message at the right points."""
    events: list[tuple[Any, ...]] = []
    service = Flaky(work)
    service.events = events
    runner, thread, raised = start(
        service, broker_url, [Recorder(events), *default_middleware()], retry_delay=0.03
    )
    running(runner, thread)
    out = sink(client, f"{work}.out", collector)
    send(client, work, "plain sailing")
    assert payloads(out.wait_for_count(1)) == ["plain sailing"]
    send(client, work, "flaky")
    assert payloads(out.wait_for_count(2))[1] == "flaky"
    client.send(work, b"{not json", headers={"workflows-recipe": True})
    send(client, work, "sentinel")
    out.wait_for_count(3)
    runner.request_stop()
    thread.join(10)
    assert raised == []
    # Failures are met inside the log context (its recipe ID), whatever the order.
    assert events == [
        ("start", "recorder"),
        ("before", "recorder", "plain sailing", False, 1),
        ("handler", "plain sailing"),
        ("after", "recorder", HANDLED),
        ("before", "recorder", "flaky", False, 1),
        ("handler", "flaky"),
        ("failure", "recorder", "RuntimeError", 1, ENVIRONMENT["ID"]),
        ("after", "recorder", RETRIED),
        ("before", "recorder", "flaky", False, 2),
        ("handler", "flaky"),
        ("after", "recorder", HANDLED),
        ("before", "recorder", None, True, 1),
        ("failure", "recorder", "InvalidMessage", 1, None),
        ("after", "recorder", DEAD_LETTERED),
        ("before", "recorder", "sentinel", False, 1),
        ("handler", "sentinel"),
        ("after", "recorder", HANDLED),
        ("stop", "recorder"),
    ]


def test_hooks_run_in_list_order_and_after_hooks_innermost_first(
    broker_url, client, work, running, wait_until
):
    """A failure hook listed after Retries never hears of a failure Retries settled
    (only of its outcome); ``after_message`` and ``on_stop`` run innermost first."""
    events: list[tuple[Any, ...]] = []
    middleware = [Recorder(events, "outer"), *default_middleware(), Recorder(events, "inner")]
    runner, thread, _ = start(Flaky(work), broker_url, middleware, retry_delay=30)
    running(runner, thread)
    send(client, work, "flaky")
    wait_until(lambda: ("after", "outer", RETRIED) in events, "the message settled", timeout=10)
    runner.request_stop()
    thread.join(10)
    assert [event[:2] for event in events] == [
        ("start", "outer"),
        ("start", "inner"),
        ("before", "outer"),
        ("before", "inner"),
        ("failure", "outer"),
        ("after", "inner"),
        ("after", "outer"),
        ("stop", "inner"),
        ("stop", "outer"),
    ]
    assert events[-3][2] == RETRIED


class Park(Middleware):
    """A facility's own failure policy: a message whose database is down is parked on
    ``parked.<queue>`` at once (no retries, no dead letter)."""

    def on_failure(self, runner: Runner, message: InHand, error: Exception) -> str | None:
        if not isinstance(error, ConnectionRefusedError):
            return None
        delivery = message.delivery
        parked = Outgoing(f"parked.{delivery.source}", delivery.body, dict(delivery.headers))
        runner.settle(delivery, [parked])
        return DEAD_LETTERED


def test_a_facilitys_failure_hook_settles_before_retries_and_dead_letters(
    broker_url, client, work, collector, running
):
    client.declare_queue(f"parked.{work}")
    service = Flaky(work, fail=100, error=ConnectionRefusedError)
    runner, thread, _ = start(
        service, broker_url, [Park(), *default_middleware()], retry_delay=0.03
    )
    running(runner, thread)
    parked = sink(client, f"parked.{work}", collector)
    dead = sink(client, f"dlq.{work}", collector)
    out = sink(client, f"{work}.out", collector)
    send(client, work, "flaky")
    send(client, work, "sentinel")
    assert payloads(parked.wait_for_count(1)) == ["flaky"]
    out.wait_for_count(1)
    assert service.calls == ["flaky", "sentinel"], "parked at once, never retried"
    assert dead.deliveries == []
    assert runner.stats.snapshot()["retried"] == 0


def test_without_middleware_a_failing_message_is_rejected_to_the_transports_dlq(
    broker_url, client, work, collector, running, caplog
):
    """No retries, no dead-letter middleware: the runner rejects (nacks without
    requeue) what nothing settled, and the transport dead-letters it with the reason."""
    client.declare_queue(f"dlq.{work}")
    service = Flaky(work, fail=100)
    runner, thread, _ = start(service, broker_url, [])
    running(runner, thread)
    dead = sink(client, f"dlq.{work}", collector)
    send(client, work, "flaky")
    (letter,) = dead.wait_for_count(1)
    assert json.loads(letter.body)["payload"] == "flaky"
    assert service.calls == ["flaky"]
    assert "no middleware settled" in caplog.text
    assert "RuntimeError: not today" in caplog.text


def test_the_failure_lines_carry_the_recipe_id(broker_url, client, work, collector, caplog):
    """The default log context covers the handler, the runner's failure line and the
    dead-letter line, not only the handler's own lines."""
    caplog.handler.addFilter(RecipeContextFilter())
    service = Flaky(work, fail=100)
    runner, thread, _ = start(service, broker_url, max_attempts=1)
    dead = sink(client, f"dlq.{work}", collector)
    try:
        send(client, work, "flaky")
        dead.wait_for_count(1)
    finally:
        runner.request_stop()
        thread.join(10)
    raised = next(r for r in caplog.records if "raised on" in r.getMessage())
    lettered = next(r for r in caplog.records if "dead-lettering" in r.getMessage())
    assert raised.recipe_ID == lettered.recipe_ID == ENVIRONMENT["ID"]
    assert "after 1 attempts" in dead.deliveries[0].headers[DLQ_REASON_HEADER]


def test_time_limits_are_reported_for_limited_handlers_only(broker_url, client, collector):
    reports: list[tuple[str, dict[str, Any]]] = []
    limited, free = (f"middleware.{label}.{uuid.uuid4().hex[:8]}" for label in ("limit", "free"))
    for queue in (limited, free, f"{limited}.out", f"{free}.out"):
        client.declare_queue(queue)

    class Limited(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(limited, self.slow, time_limit=60)
            self.add_handler(free, self.slow)

        def slow(self, step: RecipeStep, payload: Any) -> None:
            step.send(payload)

    time_limit = TimeLimit(lambda event, **details: reports.append((event, details)))
    runner, thread, _ = start(Limited(), broker_url, [*default_middleware(), time_limit])
    try:
        out = sink(client, f"{free}.out", collector)
        send(client, free, "unlimited")  # first: had it been reported, it would show first
        out.wait_for_count(1)
        send(client, limited, "limited")
        sink(client, f"{limited}.out", collector).wait_for_count(1)
    finally:
        runner.request_stop()
        thread.join(10)
    (event, details), done = reports
    assert event == "in_hand" and done == ("done", {})
    assert details["limit"] == 60
    assert details["recipe"] == ENVIRONMENT["ID"] and details["step"] == 1
    assert details["handler"].endswith("Limited.slow")
    assert limited in details["message"]
    assert isinstance(details["started"], float)


def test_a_worker_past_its_memory_limit_stops_after_the_message(
    broker_url, client, work, collector
):
    """The message that took memory past the limit is settled; the rest return."""
    hoard: list[bytes] = []

    class Hungry(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(work, self.eat, prefetch=5)

        def eat(self, step: RecipeStep, payload: Any) -> None:
            hoard.append(b"\x01" * (64 * MIB))  # written, so resident
            step.send(payload)

    limit = MemoryLimit(resident_mib() + 32)
    runner, thread, raised = start(Hungry(), broker_url, [*default_middleware(), limit])
    try:
        for number in range(3):
            send(client, work, number)
        thread.join(10)
        assert not thread.is_alive(), "the runner did not stop past its memory limit"
    finally:
        runner.request_stop()
        thread.join(10)
        hoard.clear()
    assert raised == [] and limit.recycled.is_set()
    assert runner.stats.snapshot()["handled"] == 1
    out = sink(client, f"{work}.out", collector)
    back = sink(client, work, collector)
    assert payloads(out.wait_for_count(1)) == [0]
    assert sorted(payloads(back.wait_for_count(2))) == [1, 2], "the rest returned"


def test_a_memory_limit_below_a_fresh_worker_is_ignored_with_an_error(
    broker_url, client, work, collector, running, caplog
):
    limit = MemoryLimit(1)
    runner, thread, _ = start(Flaky(work), broker_url, [*default_middleware(), limit])
    running(runner, thread)
    out = sink(client, f"{work}.out", collector)
    send(client, work, "fed")
    out.wait_for_count(1)
    assert not limit.recycled.is_set() and thread.is_alive()
    (line,) = [r for r in caplog.records if "--max-memory 1 MiB is below" in r.getMessage()]
    assert line.levelno == logging.ERROR


def test_an_invalid_message_reaches_failure_hooks_as_invalid_input(broker_url, client, work):
    """``message.step`` is None and the error an InvalidMessage naming the message."""
    seen: list[Exception] = []
    done = threading.Event()

    class Watch(Middleware):
        def on_failure(self, runner: Runner, message: InHand, error: Exception) -> str | None:
            assert message.step is None
            seen.append(error)
            return None

        def after_message(self, runner, message, outcome, seconds):
            done.set()

    runner, thread, _ = start(Flaky(work), broker_url, [Watch(), *default_middleware()])
    try:
        client.send(work, b"[]", headers={"workflows-recipe": True})
        assert done.wait(10)
    finally:
        runner.request_stop()
        thread.join(10)
    (error,) = seen
    assert isinstance(error, InvalidMessage) and work in str(error)
