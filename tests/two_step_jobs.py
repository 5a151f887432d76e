"""Start two-step jobs (``queue`` -> ``<queue>.out``) directly, as ``zocalo.go --direct`` would."""

from __future__ import annotations

from typing import Any

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.transport import Transport


def send_two_step(transport: Transport, queue: str, payloads: list[Any]) -> None:
    """One job per payload, published together and confirmed."""
    outputs = []
    for payload in payloads:
        step = RecipeStep()
        step.start(
            Recipe(
                {
                    "1": {"queue": queue, "output": 2},
                    "2": {"queue": f"{queue}.out"},
                    "start": [[1, payload]],
                }
            )
        )
        outputs += step.outputs
    transport.publish(outputs).result(30)
