"""Malformed messages into a running service: one dead letter and one log line each.

One test per class of malformed message a fuzzer found (deep nesting, a
pointer or a link of the wrong type, booleans as step ids, loops), on every
transport: a message that cannot be decoded or routed is invalid input, not
a crashing handler, so it is dead-lettered at once (never retried), with one
log line naming the message and the cause and no traceback, and the service
goes on to handle the next message.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import MAX_NESTING, encode
from zocalo.service import RunnerSettings, Service, ServiceRunner, handler
from zocalo.transport import Transport, create_transport
from zocalo.transport.base import DLQ_REASON_HEADER


@pytest.fixture
def url(each_transport_url: str) -> str:
    return each_transport_url


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own (RabbitMQ's vhost lasts the whole session)."""
    return f"bad.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(url: str) -> Iterator[Transport]:
    with create_transport(url) as transport:
        yield transport


class Forward(Service):
    """Records each call and sends the payload on (see :func:`forwarder`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, Any]] = []


def forwarder(queue: str) -> Forward:
    """A Forward service consuming ``queue``."""

    class OnQueue(Forward):
        name = "Forward"

        @handler(queue, prefetch=5)
        def forward(self, step: RecipeStep, payload: Any) -> None:
            self.calls.append((step.pointer, payload))
            step.send(payload)

    return OnQueue()


@pytest.fixture
def run(start_service, url: str) -> Callable[..., tuple[Forward, ServiceRunner]]:
    def start(queue: str, **settings: Any) -> tuple[Forward, ServiceRunner]:
        service = forwarder(queue)
        return service, start_service(service, url, **settings)

    return start


def recipe_body(recipe: dict[str, Any], pointer: Any = 1, path: Any = None, **extra: Any) -> bytes:
    message = {"recipe": recipe, "recipe-pointer": pointer, "recipe-path": path or []}
    return json.dumps({**message, "environment": {"ID": "bad-1"}, "payload": {}, **extra}).encode()


def chain(queue: str, steps: int) -> dict[str, Any]:
    """A valid recipe: ``steps`` steps on ``queue`` one after the other, then ``queue.out``."""
    recipe: dict[str, Any] = {
        str(n): {"queue": queue, "output": [n + 1]} for n in range(1, steps + 1)
    }
    recipe[str(steps + 1)] = {"queue": f"{queue}.out"}
    return {**recipe, "start": [[1, {}]]}


def bad_bodies(queue: str) -> dict[str, tuple[bytes, str]]:
    """Each failure class: (body, what the dead letter's reason must say)."""
    good = chain(queue, 1)
    deep = "[" * 5000 + "]" * 5000
    return {
        "deep-nesting": (
            recipe_body(good).replace(b'"payload": {}', f'"payload": {deep}'.encode()),
            "nested too deeply",
        ),
        "nesting-over-the-limit": (
            recipe_body(good, payload="X").replace(
                b'"X"', b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1)
            ),
            f"more than the limit of {MAX_NESTING}",
        ),
        "pointer-of-wrong-type": (recipe_body(good, pointer=[1]), "bad recipe-pointer"),
        "pointer-infinite": (
            recipe_body(good).replace(b'"recipe-pointer": 1', b'"recipe-pointer": Infinity'),
            "bad recipe-pointer",
        ),
        "path-of-wrong-type": (recipe_body(good, path=[{"1": 1}]), "bad recipe-path entry"),
        "link-of-wrong-type": (
            recipe_body({**good, "1": {"queue": queue, "output": ["2"]}}),
            "step 1 field 'output' has an invalid link '2'",
        ),
        "nested-link-list": (
            recipe_body({**good, "1": {"queue": queue, "output": {"next": [[2]]}}}),
            "step 1 field 'output' channel 'next' has an invalid link [2]",
        ),
        "queue-of-wrong-type": (
            recipe_body({**good, "2": {"queue": 7}}),
            "step 2 field 'queue' must be a name",
        ),
        "boolean-step-id": (
            recipe_body({**good, "1": {"queue": queue, "output": [True]}}),
            "true and false are not step ids",
        ),
        "boolean-pointer": (recipe_body(good, pointer=True), "bad recipe-pointer"),
        "self-loop": (
            recipe_body({"1": {"queue": queue, "output": [1]}, "start": [[1, {}]]}),
            "runaway loop: step 1 links back to step 1",
        ),
    }


CLASSES = list(bad_bodies("q"))


def dead_letters(client: Transport, queue: str, collector) -> Any:
    sink = collector(ack_with=client)
    client.subscribe(f"dlq.{queue}", sink, prefetch=50)
    return sink


def outputs(client: Transport, queue: str, collector) -> Any:
    sink = collector(ack_with=client)
    client.subscribe(f"{queue}.out", sink, prefetch=50)
    return sink


def send(client: Transport, queue: str, body: bytes) -> None:
    client.send(queue, body, headers={"workflows-recipe": True})


def only_line_about_it(caplog: pytest.LogCaptureFixture, reason: str) -> logging.LogRecord:
    """The one warning-or-worse line Zocalo logged; no record carries a traceback.

    (The broker client's own chatter, pika's queue probing on RabbitMQ, is not ours.)
    """
    assert [r.getMessage() for r in caplog.records if r.exc_info] == [], "no tracebacks"
    ours = [r for r in caplog.records if r.name.split(".")[0] == "zocalo"]
    loud = [r for r in ours if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert reason in loud[0].getMessage()
    return loud[0]


@pytest.mark.parametrize("kind", CLASSES)
def test_a_malformed_message_is_dead_lettered_once_with_one_line(
    client, run, queue, collector, caplog, kind
):
    caplog.set_level(logging.INFO)
    bad, names = bad_bodies(queue)[kind]
    dead = dead_letters(client, queue, collector)
    out = outputs(client, queue, collector)
    service, runner = run(queue)
    send(client, queue, bad)
    send(client, queue, encode(Recipe(chain(queue, 1)), 1, [], {"ID": "good"}, {"n": 1}))
    out.wait_for_count(1)  # the good one, handled after the bad one
    (dead_letter,) = dead.wait_for_count(1)
    assert dead_letter.body == bad
    reason = dead_letter.headers[DLQ_REASON_HEADER]
    assert names in reason and f"from queue {queue!r}" in reason, reason
    stats = runner.stats.snapshot()
    assert (stats["received"], stats["handled"], stats["dead_lettered"]) == (2, 1, 1), stats
    assert (stats["failed"], stats["retried"]) == (0, 0), "invalid input is not a failing handler"
    assert service.calls == [(1, {"n": 1})], "the handler never saw the bad message"
    line = only_line_about_it(caplog, names)
    assert line.levelno == logging.ERROR and "dead-lettering message" in line.getMessage()


def test_a_recipe_path_past_the_hop_limit_is_dead_lettered_as_a_runaway_loop(
    client, run, queue, collector, caplog
):
    """A path that grows hop by hop: the message at step 5 has made 4 hops, over a limit of 3."""
    caplog.set_level(logging.INFO)
    dead = dead_letters(client, queue, collector)
    out = outputs(client, queue, collector)
    service, runner = run(queue, max_hops=3)
    too_long = Recipe(chain(queue, 6))
    send(client, queue, encode(too_long, 1, [], {"ID": "loop"}, {"n": 1}))
    (dead_letter,) = dead.wait_for_count(1)
    reason = dead_letter.headers[DLQ_REASON_HEADER]
    assert "runaway loop: its recipe-path has 4 hops, more than the limit of 3" in reason
    assert json.loads(dead_letter.body)["recipe-pointer"] == 5
    assert [pointer for pointer, _ in service.calls] == [1, 2, 3, 4]
    short_enough = Recipe(chain(queue, 3))
    send(client, queue, encode(short_enough, 1, [], {"ID": "fine"}, {"n": 2}))
    (done,) = out.wait_for_count(1)
    assert json.loads(done.body)["recipe-path"] == [1, 2, 3]
    stats = runner.stats.snapshot()
    assert (stats["dead_lettered"], stats["failed"], stats["retried"]) == (1, 0, 0)
    only_line_about_it(caplog, "runaway loop")


def test_the_default_hop_limit_is_generous_and_still_a_limit(client, run, queue, collector):
    assert RunnerSettings().max_hops == 1000
    dead = dead_letters(client, queue, collector)
    out = outputs(client, queue, collector)
    run(queue)
    recipe = Recipe(chain(queue, 1))
    send(client, queue, encode(recipe, 1, [7] * 1001, {"ID": "long"}, {"n": 1}))
    send(client, queue, encode(recipe, 1, [7] * 1000, {"ID": "fine"}, {"n": 2}))
    (done,) = out.wait_for_count(1)
    assert json.loads(done.body)["payload"] == {"n": 2}
    (dead_letter,) = dead.wait_for_count(1)
    assert "1001 hops, more than the limit of 1000" in dead_letter.headers[DLQ_REASON_HEADER]
