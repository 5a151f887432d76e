"""Helpers for the cluster submission tests: recipes with a ``cluster.submission`` step,
starting them, and reading what reaches each output."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from zocalo.recipe.model import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.transport import Transport

#: Output channel -> the queue it leads to in :func:`submission_recipe`.
OUTPUT_QUEUES = {
    "job_submitted": "out.job_submitted",
    "job_completed": "out.job_completed",
    "success": "out.success",
    "failure": "out.failure",
    "error": "out.error",
    "completed": "out.completed",
}


def submission_recipe(
    parameters: dict[str, Any], channels: tuple[str, ...] = tuple(OUTPUT_QUEUES)
) -> dict[str, Any]:
    """Step 1 on ``cluster.submission``; each channel leads to a step of its own."""
    output = {channel: number for number, channel in enumerate(channels, start=2)}
    recipe: dict[str, Any] = {
        "1": {
            "service": "ClusterSubmission",
            "queue": "cluster.submission",
            "parameters": parameters,
            "output": output,
        },
        "start": [[1, {"image": 1}]],
    }
    for channel, number in output.items():
        recipe[str(number)] = {"queue": OUTPUT_QUEUES[channel]}
    return recipe


def start_recipe(transport: Transport, recipe: dict[str, Any] | Recipe) -> str:
    """Start ``recipe`` (its first messages published and confirmed); its recipe ID."""
    step = RecipeStep()
    recipe_id = step.start(recipe, environment={"ID": str(uuid.uuid4())})
    transport.publish(step.outputs).result(30)
    return recipe_id


class Outputs:
    """What reaches each output queue, as (payload, wall-clock arrival) in order."""

    def __init__(self, transport: Transport, collector: Callable[..., Any]) -> None:
        self.collectors = {}
        for channel, queue in OUTPUT_QUEUES.items():
            self.collectors[channel] = collector(ack_with=transport)
            transport.subscribe(queue, self.collectors[channel], prefetch=100)

    def payloads(self, channel: str) -> list[Any]:
        return [json.loads(body)["payload"] for body in self.collectors[channel].bodies]

    def wait(self, channel: str, count: int = 1, timeout: float = 60) -> list[Any]:
        self.collectors[channel].wait_for_count(count, timeout)
        return self.payloads(channel)

    def arrived(self, channel: str, index: int = 0) -> float:
        """Wall-clock time (``time.time()``) the ``index``-th message reached ``channel``."""
        collector = self.collectors[channel]
        body = collector.bodies[index]
        return time.time() - (time.monotonic() - collector.arrival(body))


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``condition`` (state that announces itself nowhere: Slurm's) until it holds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.1)
    return value
