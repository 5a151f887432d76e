"""JSONLines: one line per payload, written in batches before the messages are acknowledged.

Every test runs on each transport (memory, SQLite, RabbitMQ, ActiveMQ); the
queue's name is fixed (``jsonlines``), so on ActiveMQ each test has a
destination prefix of its own, and on RabbitMQ the queues a test made go when
it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lazy_jsonlines import HurriedJSONLines, LazyJSONLines

from transport_params import transports
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.services.jsonlines import BATCH, QUEUE, JSONLines
from zocalo.transport import Transport, create_transport
from zocalo.transport.base import DLQ_REASON_HEADER


@pytest.fixture
def url(each_transport_url: str, request: pytest.FixtureRequest) -> str:
    """Each transport; on ActiveMQ under a destination prefix of this test's own."""
    if each_transport_url.startswith("stomp"):
        prefix = f"jsonlines{uuid.uuid4().hex[:10]}"
        return str(request.getfixturevalue("activemq").url(prefix=prefix))
    return each_transport_url


def send_lines(client: Transport, parameters: dict[str, Any], payloads: list[Any]) -> None:
    """One recipe whose single JSONLines step gets ``payloads``, in order."""
    step = RecipeStep()
    step.start(
        Recipe(
            {
                "1": {"queue": QUEUE, "parameters": parameters},
                "start": [[1, payload] for payload in payloads],
            }
        )
    )
    client.publish(step.outputs).result(10)


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def jsonlines(url, start_service):
    return start_service(JSONLines(), url, retry_delay=0.1)


def test_each_payload_is_one_line_with_only_the_keys_asked_for(
    jsonlines, client, tmp_path, wait_until
):
    everything = tmp_path / "out" / "all.jsonl"
    some = tmp_path / "deeper" / "still" / "some.jsonl"
    payloads = [{"image": n, "spots": 10 * n, "debug": "x"} for n in range(3)]
    send_lines(client, {"output_filename": str(everything)}, [*payloads, [1, 2]])
    send_lines(
        client,
        {"output_filename": str(some), "include": ["image", "spots"], "exclude": ["spots"]},
        payloads,
    )
    wait_until(lambda: jsonlines.stats.handled == 7, "7 messages handled")
    assert lines(everything) == [*payloads, [1, 2]]
    assert lines(some) == [{"image": 0}, {"image": 1}, {"image": 2}]
    assert everything.read_text().splitlines()[0] == json.dumps(payloads[0]), "reference form"


def test_a_line_that_cannot_be_written_is_tried_again_and_written_once(
    jsonlines, client, tmp_path, wait_until
):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the directory should be")
    target = blocker / "out.jsonl"
    send_lines(client, {"output_filename": str(target)}, [{"image": 1}])
    wait_until(lambda: jsonlines.stats.failed >= 1, "a failed write")
    assert jsonlines.stats.handled == 0
    blocker.unlink()
    wait_until(lambda: jsonlines.stats.handled == 1, "the message handled on a later attempt")
    assert lines(target) == [{"image": 1}]
    assert jsonlines.stats.retried >= 1 and jsonlines.stats.dead_lettered == 0


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({}, "'output_filename' must name a file, not None"),
        ({"output_filename": "x", "include": "image"}, "'include' must be a list of keys"),
    ],
)
def test_a_step_without_usable_parameters_is_dead_lettered_with_the_reason(
    parameters, reason, jsonlines, client, collector
):
    dead = collector(ack_with=client)
    client.subscribe(f"dlq.{QUEUE}", dead)
    send_lines(client, parameters, [{"image": 1}])
    (letter,) = dead.wait_for_count(1, timeout=10)
    assert reason in letter.headers[DLQ_REASON_HEADER]


@contextlib.contextmanager
def running(service: Service, url: str, **settings: Any) -> Iterator[ServiceRunner]:
    """``service`` on a thread of its own until the block ends; then stopped, and joined."""
    runner = ServiceRunner(service, create_transport(url), RunnerSettings(**settings))
    thread = threading.Thread(target=runner.run, name=f"test-{service.name}", daemon=True)
    thread.start()
    try:
        assert runner.started.wait(30), f"{service.name} did not start"
        yield runner
    finally:
        runner.request_stop()
        thread.join(30)
        assert not thread.is_alive(), f"{service.name} did not stop"


def images(first: int, count: int) -> list[dict[str, int]]:
    return [{"image": n} for n in range(first, first + count)]


def test_250_messages_are_written_once_each_in_a_few_writes(
    jsonlines, client, tmp_path, wait_until
):
    """Batching, not a line at a time: 100, 100, then the rest on idle (a write per
    batch: the service counts them; a message that crossed an idle second alone
    could add one)."""
    target = tmp_path / "out" / "many.jsonl"
    send_lines(client, {"output_filename": str(target)}, images(0, 250))
    wait_until(lambda: jsonlines.stats.handled == 250, "250 messages handled", timeout=60)
    assert sorted(line["image"] for line in lines(target)) == list(range(250))
    service = jsonlines.service
    assert service.lines_written == 250
    assert service.writes <= 4, f"{service.writes} writes for 250 lines"


def test_a_partial_batch_is_written_once_a_second_passes_without_a_message(
    jsonlines, client, tmp_path, wait_until
):
    target = tmp_path / "few.jsonl"
    send_lines(client, {"output_filename": str(target)}, images(0, 7))
    wait_until(lambda: jsonlines.stats.handled == 7, "the 7 messages handled", timeout=15)
    assert lines(target) == images(0, 7)
    assert jsonlines.service.writes == 1, "the 7 lines in one write"


def test_lines_wait_no_longer_than_max_wait_while_messages_keep_arriving(
    url, client, tmp_path, wait_until
):
    """Messages arriving faster than the idle second never idle the service: the
    oldest line's age writes the batch (here ``max_wait`` is 0 and idling never comes)."""
    target = tmp_path / "trickle.jsonl"
    with running(HurriedJSONLines(), url) as hurried:
        send_lines(client, {"output_filename": str(target)}, images(0, 4))
        wait_until(lambda: hurried.stats.handled >= 3, "lines written, never idle", timeout=15)
        assert lines(target)[:3] == images(0, 3)


def test_a_batch_that_cannot_be_written_is_not_acked_and_is_written_once_later(
    url, client, tmp_path, wait_until, caplog
):
    caplog.set_level(logging.ERROR, "zocalo.service.runner")
    blocker = tmp_path / "results"
    blocker.write_text("a file where the directory should be")
    target = blocker / "out.jsonl"
    with running(JSONLines(), url, retry_delay=0.2, max_attempts=50) as jsonlines:
        send_lines(client, {"output_filename": str(target)}, images(0, 5))
        wait_until(lambda: jsonlines.stats.failed >= 5, "the batch failed", timeout=15)
        stats = jsonlines.stats.snapshot()
        assert stats["handled"] == 0 and stats["dead_lettered"] == 0, stats
        logged = [record.getMessage() for record in caplog.records]
        why = [line for line in logged if f"lines to {target}: " in line]
        assert why, f"a line naming the file, in {logged}"
        assert re.match(r"\d+ messages kept by JSONLines.write failed .*File exists", why[0])
        blocker.unlink()
        wait_until(lambda: jsonlines.stats.handled == 5, "the messages handled later", timeout=30)
        assert sorted(line["image"] for line in lines(target)) == list(range(5)), lines(target)
        stats = jsonlines.stats.snapshot()
        assert stats["retried"] >= 5 and stats["dead_lettered"] == 0, stats


def test_a_graceful_stop_writes_the_partial_batch_and_acks_it(url, client, tmp_path, wait_until):
    """A batch that never fills and never idles (LazyJSONLines) is written at stop; then a
    sentinel sent after it reaches the next service, and nothing came back before it."""
    target, sentinel = tmp_path / "partial.jsonl", tmp_path / "sentinel.jsonl"
    with running(LazyJSONLines(), url) as lazy:
        send_lines(client, {"output_filename": str(target)}, images(0, 30))
        wait_until(lambda: lazy.stats.received == 30, "30 messages kept", timeout=15)
        assert not target.exists(), "kept, not written yet"
    assert lazy.stats.handled == 30 and lazy.stats.publish_failed == 0
    assert lines(target) == images(0, 30)
    with running(JSONLines(), url) as after:
        send_lines(client, {"output_filename": str(sentinel)}, [{"sentinel": True}])
        wait_until(lambda: after.stats.handled == 1, "the sentinel written", timeout=15)
        assert after.stats.received == 1, "nothing of the first batch came back"
    assert lines(target) == images(0, 30)


def test_a_graceful_stop_whose_batch_cannot_be_written_leaves_it_unacked(
    url, client, tmp_path, wait_until
):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the directory should be")
    target = blocker / "out.jsonl"
    with running(LazyJSONLines(), url, retry_delay=0.2, max_attempts=50) as lazy:
        send_lines(client, {"output_filename": str(target)}, images(0, 12))
        wait_until(lambda: lazy.stats.received == 12, "12 messages kept", timeout=15)
    assert lazy.stats.handled == 0 and lazy.stats.failed == 12
    blocker.unlink()
    with running(JSONLines(), url) as after:
        wait_until(lambda: after.stats.handled == 12, "the 12 written later", timeout=30)
    assert sorted(line["image"] for line in lines(target)) == list(range(12))


@pytest.mark.slow
@pytest.mark.parametrize(
    "each_transport_url",
    transports("sqlite", "rabbitmq", "stomp"),
    indirect=True,
)
def test_kill_9_mid_batch_loses_nothing(url, client, tmp_path, wait_until):
    """(Not on memory: its broker lives in one process, so there is none to kill.)
    ``zocalo.service -s JSONLines`` killed (the whole process group) with 200 lines
    written and 50 kept: a fresh service writes the 50. A batch written but not yet
    acknowledged when the kill came is delivered and written again: a payload may appear
    twice only if it was in the file before the kill; every one is there."""
    target = tmp_path / "killed.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "lazy_jsonlines:LazyJSONLines",
            "--transport",
            url,
        ],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client.declare_queue(QUEUE)
    try:
        send_lines(client, {"output_filename": str(target)}, images(0, 250))
        wait_until(
            lambda: target.exists() and len(lines(target)) == 2 * BATCH,
            "two full batches written",
            timeout=60,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    before = Counter(line["image"] for line in lines(target))
    with running(JSONLines(), url):
        wait_until(
            lambda: set(line["image"] for line in lines(target)) == set(range(250)),
            "every payload in the file",
            timeout=60,
        )
    written = Counter(line["image"] for line in lines(target))
    twice = {image for image, count in written.items() if count > 1}
    assert twice <= set(before), "only what was written before the kill is written again"
    assert max(written.values()) <= 2


def test_a_second_jsonlines_stands_by_until_the_first_stops(
    url, client, tmp_path, wait_until, start_service, caplog
):
    """As python-zocalo's, one JSONLines consumes the queue at a time: a second one
    started beside it writes nothing, says it stands by, and takes over when the first
    stops."""
    caplog.set_level(logging.INFO, logger="zocalo.transport")
    target = tmp_path / "one-at-a-time.jsonl"
    first, second = JSONLines(), JSONLines()
    with running(first, url):
        start_service(second, url)
        send_lines(client, {"output_filename": str(target)}, images(0, 30))
        written = lambda: first.lines_written + second.lines_written  # noqa: E731
        wait_until(lambda: written() == 30, "30 lines", timeout=30)
        assert (first.lines_written, second.lines_written) == (30, 0)
    send_lines(client, {"output_filename": str(target)}, images(30, 20))
    wait_until(lambda: written() == 50, "50 lines", timeout=30)
    assert (first.lines_written, second.lines_written) == (30, 20)
    assert [line["image"] for line in lines(target)] == list(range(50))
    messages = [record.getMessage() for record in caplog.records]
    assert any("took over queue 'jsonlines'" in message for message in messages)
