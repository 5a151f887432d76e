"""Our ActiveMQ transport and python-workflows' StompTransport (PyPI ``workflows``) on one
broker: recipes, headers, delays, dead letters, status broadcasts and shutdown commands."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from stomp_helpers import PREFIX, Forward, unique

from zocalo.monitor.view import Monitor
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.transport import dlq_name
from zocalo.transport.dead_letters import DLQ_QUEUE_HEADER, DLQ_REASON_HEADER

pytestmark = pytest.mark.stomp
HERE = Path(__file__).parent


class Received:
    """A python-workflows callback ``(header, message)`` that records and lets tests wait."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.items: list[tuple[dict[str, Any], Any]] = []

    def __call__(self, header: dict[str, Any], message: Any) -> None:
        with self.condition:
            self.items.append((header, message))
            self.condition.notify_all()

    def wait_for_count(self, count: int, timeout: float = 10) -> list[tuple[dict[str, Any], Any]]:
        with self.condition:
            assert self.condition.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)


def start_theirs(activemq: Any, queue: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "theirs.py"),
            str(activemq.stomp_port),
            "zocalo",
            activemq.password,
            PREFIX,
            queue,
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def test_a_recipe_goes_ours_theirs_ours_and_each_monitor_sees_the_other(
    activemq, stomp, stomp_url, run_service, collector, theirs
):
    first, middle, last = unique("ours1"), unique("theirs"), unique("ours2")
    run_service(Forward(first))
    run_service(Forward(last))
    frontend = start_theirs(activemq, middle)
    try:
        with Monitor(stomp_url) as ours_watching:
            end = collector(ack_with=stomp)
            stomp.subscribe(f"{last}.end", end)
            recipe = Recipe(
                {
                    "1": {"service": "ours", "queue": first, "output": 2},
                    "2": {"service": "theirs (python-workflows)", "queue": middle, "output": 3},
                    "3": {"service": "ours", "queue": last, "output": 4},
                    "4": {"service": "end", "queue": f"{last}.end"},
                    "start": [[1, {}]],
                }
            )
            step = RecipeStep()
            step.start(recipe, environment={"ID": "interop-1", "beamline": "i03"})
            stomp.publish(step.outputs).result(10)
            (delivery,) = end.wait_for_count(1, timeout=60)
            deadline = time.monotonic() + 30
            while not any(e.service == "Theirs" for e in ours_watching.status.entries()):
                assert time.monotonic() < deadline, "our monitor never saw their frontend"
                threading.Event().wait(0.05)
    finally:
        stop(frontend)
    body = json.loads(delivery.body)
    assert body["payload"] == {"hops": 1}, "their service forwarded it exactly once"
    assert body["recipe-path"] == [1, 2, 3]
    assert body["recipe-pointer"] == 4
    assert body["environment"] == {"ID": "interop-1", "beamline": "i03"}
    assert Recipe(body["recipe"]) == recipe
    assert delivery.headers["workflows-recipe"] in (True, "True")


def test_headers_delays_and_prefix_on_the_wire(stomp, collector, theirs):
    queue = unique("wire")
    reference = theirs()
    # Theirs -> ours: strings stay strings; the prefix is on both sides.
    reference.send(queue, {"n": 1}, headers={"workflows-recipe": True, "step": 3}, delay=0.3)
    reference.send(queue, {"n": 2})
    received = collector(ack_with=stomp)
    stomp.subscribe(queue, received)
    prompt, delayed = received.wait_for_count(2, timeout=10)
    assert (json.loads(prompt.body), json.loads(delayed.body)) == ({"n": 2}, {"n": 1})
    assert delayed.headers == {"workflows-recipe": "True", "step": "3"}
    assert "persistent" not in delayed.headers and "destination" not in delayed.headers

    # Ours -> theirs: typed values arrive as their JSON text.
    inbox = Received()
    reference.subscribe(f"{queue}.back", inbox, acknowledgement=True)
    stomp.send(
        f"{queue}.back",
        json.dumps({"n": 3}),
        headers={"workflows-recipe": True, "text": "plain", "list": [1, "x"]},
        priority=7,
    )
    [(header, message)] = inbox.wait_for_count(1)
    reference.ack(header)
    assert message == {"n": 3}
    assert header["destination"] == f"/queue/{PREFIX}.{queue}.back"
    assert header["workflows-recipe"] == "true"  # accepted by their recipe wrapper
    assert (header["text"], header["list"], header["priority"]) == ("plain", '[1, "x"]', "7")
    assert header["persistent"] == "true"


def test_their_nack_and_our_dead_letters_meet_in_the_dlq_prefix(stomp, collector, theirs):
    """python-workflows' nack makes ActiveMQ dead-letter the message into DLQ.<prefix>.<queue>,
    where we dead-letter too: our dlq.<queue> reads both, described alike."""
    queue = unique("dlq")
    reference = theirs()
    inbox = Received()
    subscription_id = reference.subscribe(queue, inbox, acknowledgement=True)
    reference.send(queue, {"theirs": True})
    [(header, _)] = inbox.wait_for_count(1)
    reference.nack(header)
    reference.unsubscribe(subscription_id)

    stomp.send(queue, b"ours")
    received = collector()
    subscription = stomp.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    stomp.nack(delivery, requeue=False, reason="not for us")
    stomp.unsubscribe(subscription)

    # Both where python-zocalo's dead-letter tools look: /queue/DLQ.<prefix>.<queue>
    # (read, not acknowledged: they return when the reader leaves).
    tools = Received()
    reading = reference.subscribe(
        f"DLQ.{PREFIX}.{queue}", tools, acknowledgement=True, ignore_namespace=True
    )
    assert sorted(
        m if isinstance(m, str) else json.dumps(m) for _, m in tools.wait_for_count(2)
    ) == ["ours", '{"theirs": true}']
    reference.unsubscribe(reading)

    dead = collector(ack_with=stomp)
    stomp.subscribe(dlq_name(queue), dead)
    letters = dead.wait_for_count(2)
    by_body = {letter.body: letter for letter in letters}
    theirs_letter, ours_letter = by_body[b'{"theirs": true}'], by_body[b"ours"]
    assert ours_letter.headers[DLQ_REASON_HEADER] == "not for us"
    assert "dead-lettered by ActiveMQ" in theirs_letter.headers[DLQ_REASON_HEADER]
    assert ours_letter.headers[DLQ_QUEUE_HEADER] == theirs_letter.headers[DLQ_QUEUE_HEADER] == queue


def test_status_and_shutdown_commands_cross_activemq(stomp_url, activemq, theirs):
    """Their monitor reads our status broadcasts; their shutdown command stops our
    service; our zocalo.shutdown stops their frontend."""
    from click.testing import CliRunner
    from workflows.contrib.status_monitor import Monitor as TheirMonitor

    from zocalo.cli.shutdown import command as shutdown

    reference = theirs()
    watching = TheirMonitor(transport=reference.__class__)
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "fleet_services:Passthrough",
            "--transport",
            stomp_url,
        ],
        env=dict(os.environ, PYTHONPATH=str(HERE.parent / "service")),
        start_new_session=True,
    )
    frontend = start_theirs(activemq, unique("idle"))
    ours_watching = Monitor(stomp_url).__enter__()
    try:
        deadline = time.monotonic() + 60
        while not any(
            status.get("serviceclass") == "Passthrough" and status.get("statustext") == "idle"
            for status in list(watching._node_status.values())
        ):
            assert service.poll() is None, "our service exited"
            assert time.monotonic() < deadline, "their monitor never saw our service idle"
            threading.Event().wait(0.05)
        reference.broadcast("command", {"command": "shutdown", "service": "Passthrough"})
        assert service.wait(60) == 0

        while not any(e.service_class == "Theirs" for e in ours_watching.status.entries()):
            assert time.monotonic() < deadline, "our monitor never saw their frontend"
            threading.Event().wait(0.05)
        result = CliRunner().invoke(shutdown, ["-s", "Theirs", "--transport", stomp_url])
        assert result.exit_code == 0, result.output
        frontend.wait(60)
    finally:
        ours_watching.__exit__()
        watching._transport.disconnect()
        stop(service)
        stop(frontend)


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "1e999"])
def test_a_typed_header_that_json_cannot_hold_is_kept_as_text(stomp, collector, theirs, value):
    """A sender of another kind may list a header in ``zocalo-typed`` whose text is no
    JSON value we could send again (NaN, an infinity): it reads as its text, so the
    message can still be dead-lettered (its copy was refused after the delivery was
    taken: it stayed unsettled, holding the subscription's one prefetch, and nothing
    more was delivered)."""
    queue = unique("typed")
    reference = theirs()
    reference.send(queue, "poison", headers={"zocalo-typed": '["x"]', "x": value})
    reference.send(queue, "next")
    received = collector()
    stomp.subscribe(queue, received, prefetch=1)
    [delivery] = received.wait_for_count(1)
    assert delivery.headers["x"] == value
    stomp.nack(delivery, requeue=False, reason="not for us")
    dead = collector(ack_with=stomp)
    stomp.subscribe(dlq_name(queue), dead)
    [letter] = dead.wait_for_count(1)
    assert (letter.body, letter.headers["x"]) == (b'"poison"', value)  # (theirs is JSON)
    assert received.wait_for_count(2)[1].body == b'"next"'
