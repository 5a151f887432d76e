"""Helpers for wrapper tests: a recipe step to wrap, and the queues its outputs reach."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from zocalo.recipe.model import Recipe
from zocalo.recipe.wire import encode
from zocalo.transport import Transport

RECIPE_ID = "7f9c1a52-0000-4000-8000-000000000001"
#: The wrapper channels a recipe may name, and the queue each one leads to here.
CHANNELS = {
    "starting": "out.starting",
    "updates": "out.updates",
    "success": "out.success",
    "failure": "out.failure",
    "completed": "out.completed",
    "result-individual-file": "out.file",
    "result-all-files": "out.files",
}


def wrapped_recipe(
    parameters: dict[str, Any] | None = None,
    channels: tuple[str, ...] = tuple(CHANNELS),
    step: dict[str, Any] | None = None,
) -> Recipe:
    """Step 1 is the wrapped step; each named channel leads to a step of its own."""
    output = {channel: number for number, channel in enumerate(channels, start=2)}
    recipe: dict[str, Any] = {
        "1": {"queue": "wrapped", "parameters": parameters or {}, "output": output, **(step or {})},
        "start": [[1, {}]],
    }
    for channel, number in output.items():
        recipe[str(number)] = {"queue": CHANNELS[channel]}
    return Recipe(recipe)


def recipe_body(recipe: Recipe, payload: Any = None, recipe_id: str = RECIPE_ID) -> bytes:
    return encode(recipe, 1, [], {"ID": recipe_id}, payload if payload is not None else {})


class Outputs:
    """Collects what reaches each channel's queue, decoded to (channel, payload)."""

    def __init__(self, transport: Transport, collector: Callable[..., Any]) -> None:
        self.collectors = {}
        for channel, queue in CHANNELS.items():
            self.collectors[channel] = collector(ack_with=transport)
            transport.subscribe(queue, self.collectors[channel], prefetch=100)

    def payloads(self, channel: str) -> list[Any]:
        return [json.loads(body)["payload"] for body in self.collectors[channel].bodies]

    def wait(self, channel: str, count: int = 1) -> list[Any]:
        self.collectors[channel].wait_for_count(count)
        return self.payloads(channel)

    def bodies(self, channel: str) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.collectors[channel].bodies]
