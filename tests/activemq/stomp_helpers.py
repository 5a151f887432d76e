"""Helpers of the ActiveMQ tests (imported by the tests and their conftest)."""

from __future__ import annotations

import uuid
from typing import Any

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import Service
from zocalo.transport import Transport

#: The destination prefix of these tests (python-workflows' --stomp-prfx).
PREFIX = "zocalo"


def unique(label: str) -> str:
    return f"stomp.{label}.{uuid.uuid4().hex[:8]}"


class Forward(Service):
    """Forwards along the recipe; its queue is set per test."""

    def __init__(self, queue: str, prefetch: int = 10) -> None:
        super().__init__()
        self.add_handler(queue, self.forward, prefetch=prefetch)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


def start_recipe(transport: Transport, recipe: Recipe, payloads: list[Any]) -> None:
    outputs = []
    for payload in payloads:
        step = RecipeStep()
        step.start(Recipe({**recipe.to_dict(), "start": [[1, payload]]}))
        outputs += step.outputs
    transport.publish(outputs).result(60)
