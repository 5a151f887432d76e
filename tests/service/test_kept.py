"""Kept messages: a handler keeps its message and the service settles a group later.

On each transport (memory hands deliveries to the runner's thread; the others call
the handler on their callback thread, and the idle flush comes from a timer thread).
Queue names are unique per test.
"""

from __future__ import annotations

import json
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from zocalo.errors import ZocaloError
from zocalo.logs import recipe_id_var
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import encode
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.service.kept import Kept
from zocalo.service.middleware import HANDLED, RETRIED, RETURNED, InHand, Middleware, Runner
from zocalo.service.middleware.log_context import LogContext
from zocalo.service.middleware.time_limit import TimeLimit
from zocalo.transport import Transport, create_transport


@pytest.fixture
def broker_url(each_transport_url: str) -> str:
    return each_transport_url


@pytest.fixture
def queues(client: Transport) -> tuple[str, str]:
    """A work queue and an output queue of this test's own, declared."""
    prefix = f"kept.{uuid.uuid4().hex[:10]}"
    work, out = f"{prefix}.work", f"{prefix}.out"
    client.declare_queue(work)
    client.declare_queue(out)
    return work, out


class Gatherer(Service):
    """Keeps every message; ``flush_kept`` settles what it keeps in one group (or fails it,
    or keeps it: ``mode``), after sending one output per message."""

    flush_idle = 0.2

    def __init__(
        self, queue: str, size: int, mode: str = "settle", time_limit: float | None = None
    ) -> None:
        super().__init__()
        self.size = size
        self.mode = mode
        self.kept: list[Kept] = []
        self.groups: list[int] = []
        self.add_handler(queue, self.gather, prefetch=size, time_limit=time_limit)

    def gather(self, step: RecipeStep, payload: Any) -> None:
        step.send_to("result", payload)
        self.kept.append(self.keep_message())
        if payload == "raise":
            raise RuntimeError("after keeping")
        if len(self.kept) >= self.size:
            self.flush_kept()
            if payload == "raise after settling":
                raise RuntimeError("after settling")

    def flush_kept(self) -> None:
        if self.mode == "hold":
            return
        group, self.kept = self.kept, []
        self.groups.append(len(group))
        if self.mode == "fail":
            self.fail_kept(group, OSError("disk full"))
        else:
            self.settle_kept(group)


class Outcomes(Middleware):
    """Records each hook call that concerns the end of a message."""

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self.ended: list[tuple[Any, str]] = []
        self.threads: set[str] = set()

    def on_kept(self, runner: Runner, message: InHand) -> None:
        self.kept.append(json.loads(message.delivery.body)["payload"])

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        self.ended.append((json.loads(message.delivery.body)["payload"], outcome))


def send(client: Transport, work: str, out: str, values: list[Any]) -> None:
    recipe = Recipe(
        {"1": {"queue": work, "output": {"result": 2}}, "2": {"queue": out}, "start": [[1, 0]]}
    )
    for value in values:
        client.send(
            work, encode(recipe, 1, [], {"ID": "r-1"}, value), headers={"workflows-recipe": True}
        )


def test_a_group_is_settled_with_its_outputs_in_one_go(
    client, queues, start_service, collector, wait_until
):
    work, out = queues
    results = collector(ack_with=client)
    client.subscribe(out, results, prefetch=100)
    hooks = Outcomes()
    service = Gatherer(work, size=5)
    runner = start_service(service, middleware=[hooks])
    send(client, work, out, list(range(7)))
    arrived = results.wait_for_count(7)
    assert sorted(json.loads(d.body)["payload"] for d in arrived) == list(range(7))
    wait_until(lambda: len(hooks.ended) == 7, "every message ended")
    assert service.groups == [5, 2], "a full group, then the rest on idle"
    assert sorted(hooks.ended) == [(n, HANDLED) for n in range(7)]
    assert sorted(hooks.kept) == [0, 1, 2, 3, 5, 6], "the 5th filled the group: not kept"
    assert runner.stats.handled == 7 and runner.stats.failed == 0


def test_a_failed_group_goes_through_retries_message_by_message(
    client, queues, start_service, wait_until
):
    work, out = queues
    hooks = Outcomes()
    service = Gatherer(work, size=3, mode="fail")
    runner = start_service(service, middleware=[hooks], retry_delay=0.05, max_attempts=2)
    send(client, work, out, ["a", "b", "c"])
    wait_until(lambda: runner.stats.dead_lettered == 3, "each dead-lettered after 2 attempts")
    assert runner.stats.retried == 3 and runner.stats.handled == 0
    assert sorted(outcome for _, outcome in hooks.ended).count(RETRIED) == 3


def test_a_handler_that_raises_after_keeping_fails_its_message_and_keeps_nothing(
    client, queues, start_service, wait_until
):
    work, out = queues
    hooks = Outcomes()
    service = Gatherer(work, size=2)
    runner = start_service(service, middleware=[hooks], retry_delay=30)
    send(client, work, out, ["raise"])
    wait_until(lambda: hooks.ended == [("raise", RETRIED)], "retried")
    assert hooks.kept == [] and runner.stats.handled == 0
    service.settle_kept(service.kept)  # settling what is no longer kept does nothing
    assert runner.stats.handled == 0


def test_a_handler_that_raises_after_settling_its_group_leaves_the_settlement(
    client, queues, start_service, collector, wait_until
):
    work, out = queues
    results = collector(ack_with=client)
    client.subscribe(out, results, prefetch=100)
    hooks = Outcomes()
    runner = start_service(Gatherer(work, size=2), middleware=[hooks], retry_delay=0.05)
    send(client, work, out, ["first", "raise after settling"])
    results.wait_for_count(2)
    wait_until(lambda: len(hooks.ended) == 2, "both ended")
    assert sorted(hooks.ended) == [("first", HANDLED), ("raise after settling", HANDLED)]
    assert runner.stats.retried == 0 and runner.stats.handled == 2


def test_what_is_still_kept_at_stop_returns_to_its_queue(
    client, queues, start_service, collector, wait_until, broker_url
):
    work, out = queues
    hooks = Outcomes()
    holding = ServiceRunner(
        Gatherer(work, size=10, mode="hold"),
        create_transport(broker_url),
        RunnerSettings(),
        [hooks],
    )
    thread = threading.Thread(target=holding.run, daemon=True)
    thread.start()
    assert holding.started.wait(10)
    send(client, work, out, [1, 2, 3])
    wait_until(lambda: len(hooks.kept) == 3, "3 kept")
    holding.request_stop()
    thread.join(30)
    assert not thread.is_alive()
    assert sorted(hooks.ended) == [(1, RETURNED), (2, RETURNED), (3, RETURNED)]
    assert holding.stats.handled == 0
    results = collector(ack_with=client)
    client.subscribe(out, results, prefetch=100)
    start_service(Gatherer(work, size=3))
    arrived = results.wait_for_count(3)
    assert sorted(json.loads(d.body)["payload"] for d in arrived) == [1, 2, 3]


def test_keep_is_for_a_handler(queues, start_service):
    service = Gatherer(queues[0], size=1)
    with pytest.raises(ZocaloError, match="keeps messages only under a runner"):
        service.keep_message()
    start_service(service)
    with pytest.raises(ZocaloError, match="only the handler"):
        service.keep_message()


def test_a_time_limit_ends_when_the_handler_keeps_its_message(
    client, queues, start_service, wait_until
):
    """The supervisor hears ``done`` as each handler returns, kept or not; a group settled
    later (the third message fills it) says nothing more, so the limited message in hand
    is not reported done early, and kept ones never outlive their limit."""
    work, out = queues
    reports: list[str] = []
    hooks = Outcomes()
    time_limit = TimeLimit(lambda event, **details: reports.append(event))
    start_service(Gatherer(work, size=3, time_limit=60), middleware=[time_limit, hooks])
    send(client, work, out, [1, 2, 3])
    wait_until(lambda: len(hooks.ended) == 3, "the group settled")
    assert reports == ["in_hand", "done"] * 3


def test_the_log_context_leaves_with_the_handler_of_a_kept_message() -> None:
    """Kept, a message's recipe ID leaves the log context when its handler returns; settled
    later, while another message is in hand, it leaves that one's context alone."""
    context = LogContext()
    first, second = (
        InHand(None, None, 0.0)
        for _ in range(2)  # type: ignore[arg-type]
    )
    first.step = SimpleNamespace(recipe_id="first", pointer=1)  # type: ignore[assignment]
    second.step = SimpleNamespace(recipe_id="second", pointer=1)  # type: ignore[assignment]
    runner: Any = None
    before = recipe_id_var.get()
    context.before_message(runner, first)
    assert recipe_id_var.get() == "first"
    context.on_kept(runner, first)
    assert recipe_id_var.get() == before
    context.before_message(runner, second)
    context.after_message(runner, first, HANDLED, 1.0)  # its group, filled by the second
    assert recipe_id_var.get() == "second"
    context.after_message(runner, second, HANDLED, 1.0)
    assert recipe_id_var.get() == before
