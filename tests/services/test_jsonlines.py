"""JSONLines: one line per payload, written before the message is acknowledged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.services.jsonlines import QUEUE, JSONLines
from zocalo.transport import Transport
from zocalo.transport.base import DLQ_REASON_HEADER


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
