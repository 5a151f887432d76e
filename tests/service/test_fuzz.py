"""Seeded fuzzing: random and mutated messages into a running service on the embedded broker.

Thousands of bodies (random bytes, random JSON, deep nesting, valid recipe
messages mutated in structure or in bytes) with random headers go to a real
``zocalo.service`` process. Afterwards the service must still be up and
handle a good job, every message must be accounted for (each original
handled once or dead-lettered exactly once, and the service received exactly
what was sent to it), and its log must hold no traceback and nothing but
one line per dead letter (besides start, stop and routing warnings).

``ZOCALO_FUZZ_SEED`` and ``ZOCALO_FUZZ_COUNT`` change the run (e.g. 10000).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_services import HOP, NUMBER, QUEUE, RECEIPTS  # beside this file, as the service runs it

from zocalo.recipe.wire import MAX_NESTING
from zocalo.service.runner import STOPPED_MARK
from zocalo.service.status import Status
from zocalo.transport import Delivery, Transport
from zocalo.transport.base import DLQ_REASON_HEADER, Outgoing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEED = int(os.environ.get("ZOCALO_FUZZ_SEED", "20261130"))
COUNT = int(os.environ.get("ZOCALO_FUZZ_COUNT", "10000"))
#: The hop limit the service runs with (``--max-hops``): low, so fuzzed paths reach it.
MAX_HOPS = 20
DEAD = f"dlq.{QUEUE}"

ATOMS: list[Any] = [
    None, True, False, 0, 1, 2, 3, 4, -1, 7, 2**70, 10**400, 1.5, 2.0, 1e308,
    float("inf"), float("nan"), "", "1", "2", "x", QUEUE, "fuzz.out", "start", "error",
    "Infinity", 'é\n"\\', [], {}, [1], [True], {"next": 2},
]  # fmt: skip
KEYS = ["1", "2", "3", "queue", "topic", "output", "error", "start", "transport-delay", "x"]


def templates() -> list[dict[str, Any]]:
    """Valid recipes whose steps come back to the fuzzed service's own queue."""
    return [
        {
            "1": {"queue": QUEUE, "output": [2]},
            "2": {"queue": QUEUE, "output": {"next": 3, "also": [4]}},
            "3": {"queue": "fuzz.out"},
            "4": {"topic": "fuzz.topic"},
            "start": [[1, {}]],
        },
        {
            "1": {"queue": QUEUE, "output": 2, "error": 3, "parameters": {"a": [1, {"b": 2}]}},
            "2": {"queue": "fuzz.out"},
            "3": {"queue": "fuzz.error"},
            "start": [[1, {}]],
            "error": [3],
        },
        {"1": {"queue": QUEUE}, "start": [[1, {}]]},
    ]


class Fuzzer:
    """Makes one fuzz message (body and headers) at a time from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds = collections.Counter[str]()

    def atom(self) -> Any:
        return copy.deepcopy(self.rng.choice(ATOMS))  # never one list in two places

    def value(self, depth: int = 0) -> Any:
        roll = self.rng.random()
        if depth >= 3 or roll < 0.5:
            return self.atom()
        if roll < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        keys = self.rng.sample(KEYS, self.rng.randint(0, 3))
        return {key: self.value(depth + 1) for key in keys}

    def deep(self) -> str:
        depth = self.rng.choice([MAX_NESTING, MAX_NESTING + 1, 300, 990, 1000, 5000, 100_000])
        opening, closing = self.rng.choice([("[", "]"), ('{"a": ', "}"), ('[{"a": ', "}]")])
        return opening * depth + "1" + closing * depth

    def message(self) -> dict[str, Any]:
        recipe = copy.deepcopy(self.rng.choice(templates()))
        pointer, path = 1, []
        if self.rng.random() < 0.3 and recipe["1"].get("output") == [2]:
            pointer, path = 2, [1]
        return {
            "recipe": recipe,
            "recipe-pointer": pointer,
            "recipe-path": path,
            "environment": {"ID": f"fuzz-{self.rng.randrange(10**6)}"},
            "payload": self.value(),
        }

    def places(self, value: Any) -> list[tuple[Any, Any]]:
        """Every (container, key) in ``value``, to pick one to change."""
        found: list[tuple[Any, Any]] = []
        pending = [value]
        while pending:
            item = pending.pop()
            keys = list(item) if isinstance(item, dict) else range(len(item))
            for key in keys:
                found.append((item, key))
                if isinstance(item[key], dict | list):
                    pending.append(item[key])
        return found

    def mutate(self, message: dict[str, Any]) -> str | None:
        """Change ``message`` in one of many ways; JSON text only when no longer a dict."""
        recipe = message.get("recipe")
        values = recipe.values() if isinstance(recipe, dict) else []
        steps = [value for value in values if isinstance(value, dict)]
        step = self.rng.choice(steps) if steps else {}
        how = self.rng.randrange(11)
        self.kinds[f"mutation-{how}"] += 1
        places = self.places(message)
        if how == 0 and places:
            container, key = self.rng.choice(places)
            container[key] = self.value()
        elif how == 1 and places:
            container, key = self.rng.choice(places)
            del container[key]
        elif how == 2:
            message["recipe-pointer"] = self.atom()
        elif how == 3:
            message["recipe-path"] = self.rng.choice(
                [[1] * (MAX_HOPS + self.rng.randint(1, 5)), [True], [1, "x"], 5, [[1]], [1.5]]
            )
        elif how == 4:  # loops: to itself, back to the start, fanning out
            step["output"] = self.rng.choice([[1], [1, 1], {"again": [1]}, [2, 2]])
            step["queue"] = QUEUE
        elif how == 5:  # booleans where step ids go
            step[self.rng.choice(["output", "error"])] = self.rng.choice(
                [[True], True, {"next": False}, [2, True]]
            )
        elif how == 6:
            step[self.rng.choice(["queue", "topic"])] = self.atom()
        elif how == 7:
            step["transport-delay"] = self.rng.choice([-1, "soon", [1], True, float("inf"), 0])
        elif how == 8:  # a link of the wrong type
            step["output"] = self.rng.choice([["2"], [[2]], {"next": "3"}, 1.5, {"n": {"m": [9]}}])
        elif how == 9 and places:
            container, key = self.rng.choice(places)
            container[key] = "@DEEP@"
            return json.dumps(message).replace('"@DEEP@"', self.deep())
        elif how == 10:  # just within the hop limit
            message["recipe-path"] = [1] * self.rng.randint(MAX_HOPS - 2, MAX_HOPS)
        return None

    def garble(self, text: bytes) -> bytes:
        """Byte-level damage: cut short, flip a byte, insert junk, or repeat a slice."""
        at = self.rng.randrange(len(text))
        how = self.rng.randrange(4)
        if how == 0:
            return text[:at]
        if how == 1:
            return text[:at] + bytes([self.rng.randrange(256)]) + text[at + 1 :]
        if how == 2:
            return text[:at] + self.rng.randbytes(self.rng.randint(1, 8)) + text[at:]
        end = min(len(text), at + self.rng.randint(1, 40))
        return text[:end] + text[at:]

    def headers(self, number: int) -> dict[str, Any]:
        headers: dict[str, Any] = {NUMBER: number}
        roll = self.rng.random()
        if roll < 0.85:
            headers["workflows-recipe"] = True
        elif roll < 0.95:
            headers["workflows-recipe"] = self.rng.choice(
                ["True", "true", 1, False, "yes", None, 0, "1", [True]]
            )
        for _ in range(self.rng.choice([0, 0, 0, 1, 2])):
            name = self.rng.choice(["x", "zocalo-attempt", "x-death", "priority", "dlq-reason"])
            headers[name] = self.value(1)
        return headers

    def body(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.05:
            self.kinds["random-bytes"] += 1
            return self.rng.randbytes(self.rng.randint(0, 64))
        if roll < 0.12:
            self.kinds["random-json"] += 1
            return json.dumps(self.value()).encode()
        if roll < 0.17:
            self.kinds["deep"] += 1
            return self.deep().encode()
        if roll < 0.27:
            self.kinds["valid"] += 1
            return json.dumps(self.message()).encode()
        if roll < 0.42:
            self.kinds["garbled"] += 1
            return self.garble(json.dumps(self.message()).encode())
        self.kinds["mutated"] += 1
        message = self.message()
        for _ in range(self.rng.randint(1, 3)):
            if (text := self.mutate(message)) is not None:
                return text.encode()
        return json.dumps(message).encode()


@pytest.fixture
def service_log(tmp_path: Path) -> Path:
    return tmp_path / "service.log"


@pytest.fixture
def echo_service(sqlite_broker: str, service_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``zocalo.service`` running fuzz_services:Echo, its whole log in ``service_log``."""
    with service_log.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zocalo.cli.service",
                "-s",
                "fuzz_services:Echo",
                "--transport",
                sqlite_broker,
                "--max-hops",
                str(MAX_HOPS),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def drain(client: Transport, queue: str, sink: Any, count: int) -> list[Delivery]:
    """The ``count`` messages ``sink`` gets from ``queue``, shown to be all by a sentinel."""
    sink.wait_for_count(count, timeout=60)
    client.send(queue, b'"sentinel"', headers={NUMBER: "sentinel"})
    everything = sink.wait_until(
        lambda ds: any(d.headers.get(NUMBER) == "sentinel" for d in ds), f"the end of {queue}"
    )
    return [d for d in everything if d.headers.get(NUMBER) != "sentinel"]


def test_fuzzed_messages_are_each_dead_lettered_once_and_the_service_survives(
    echo_service, client_url_transport, status_watch, collector, service_log, wait_until
):
    client = client_url_transport
    receipts = collector(ack_with=client)
    dead = collector(ack_with=client)
    good = collector(ack_with=client)
    client.subscribe(RECEIPTS, receipts, prefetch=500)
    client.subscribe(DEAD, dead, prefetch=500)
    client.subscribe("fuzz.good", good)
    status_watch.wait_for(lambda r: r["status"] == Status.IDLE, "an idle service", timeout=60)

    fuzzer = Fuzzer(SEED)
    batch: list[Outgoing] = []
    for number in range(COUNT):
        batch.append(Outgoing(QUEUE, fuzzer.body(), fuzzer.headers(number)))
        if len(batch) == 500 or number == COUNT - 1:
            client.publish(batch).result(60)
            batch = []
    print(f"\nfuzz seed {SEED}: {COUNT} messages, {dict(sorted(fuzzer.kinds.items()))}")

    job = {"1": {"queue": QUEUE, "output": 2}, "2": {"queue": "fuzz.good"}, "start": [[1, {}]]}
    good_body = {"recipe": job, "recipe-pointer": 1, "environment": {"ID": "good"}, "payload": 1}
    client.send(QUEUE, json.dumps(good_body), headers={"workflows-recipe": True, NUMBER: "good"})
    (done,) = good.wait_for_count(1, timeout=120)
    assert json.loads(done.body)["recipe-path"] == [1], "a good job after the fuzz succeeds"
    assert echo_service.poll() is None, "the service survived"

    def settled() -> bool:
        stats = {s.queue: s for s in client.queue_stats()}.get(QUEUE)
        return stats is None or (stats.ready == 0 and stats.in_flight == 0)

    wait_until(settled, "the service to take everything ready in its queue", timeout=120)
    os.killpg(echo_service.pid, signal.SIGTERM)
    assert echo_service.wait(60) == 0
    log = service_log.read_text(errors="replace")
    (stop_line,) = [line for line in log.splitlines() if STOPPED_MARK in line]
    stats = json.loads(stop_line.split(STOPPED_MARK, 1)[1])
    left = {s.queue: s for s in client.queue_stats()}.get(QUEUE)
    left_over = 0 if left is None else left.ready + left.delayed + left.in_flight
    print(f"service counters: {stats}; left in {QUEUE}: {left_over}")

    # Invalid input is never a failing handler: no retries, nothing lost.
    assert (stats["failed"], stats["retried"], stats["publish_failed"]) == (0, 0, 0)
    assert stats["received"] == stats["handled"] + stats["dead_lettered"]
    handled = drain(client, RECEIPTS, receipts, stats["handled"])
    dead_letters = drain(client, DEAD, dead, stats["dead_lettered"])
    came_back = sum(json.loads(d.body)["back"] for d in handled)
    assert stats["received"] + left_over == COUNT + 1 + came_back, "received all that was sent"

    originals_handled = collections.Counter(
        json.loads(d.body)["n"] for d in handled if json.loads(d.body)["original"]
    )
    originals_dead = collections.Counter(
        d.headers[NUMBER] for d in dead_letters if HOP not in d.headers
    )
    for number in range(COUNT):
        outcomes = originals_handled[number] + originals_dead[number]
        assert outcomes == 1, f"fuzz message {number}: handled or dead-lettered {outcomes} times"
    reasons = [d.headers[DLQ_REASON_HEADER] for d in dead_letters]
    for cause in [
        "nested too deeply",
        f"more than the limit of {MAX_NESTING}",
        "not valid JSON",
        "bad recipe-pointer",
        "bad recipe-path",
        "invalid link",
        "true and false are not step ids",
        "runaway loop: step",
        f"more than the limit of {MAX_HOPS} (",
        "must be a name",
        "transport-delay",
        "not a recipe message",
    ]:
        assert any(cause in reason for reason in reasons), f"the fuzz never hit {cause!r}"

    # The log: no traceback; one line per dead letter; the rest is start, stop and routing.
    assert "Traceback" not in log
    lines = log.splitlines()
    dead_lines = [line for line in lines if "dead-lettering message" in line]
    assert len(dead_lines) == stats["dead_lettered"]
    loud = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
    # Expected besides: outputs to a fuzzed channel that leads nowhere, and the broker's
    # one warning per queue no consumer ever read on this file (fuzzed queue names).
    expected = ("dead-lettering message", "sent nothing", "no consumer has ever read queue")
    other = [
        line for line in lines if loud.search(line) and not any(text in line for text in expected)
    ]
    assert other == [], other[:5]
