"""Parts for the Join tests: recipes whose step 1 is a Join, started directly."""

from __future__ import annotations

import json
from typing import Any

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.services.join import QUEUE
from zocalo.transport import Delivery, Outgoing, Transport

JOINED = "joined"
TIMED_OUT = "joined.timeout"


def join_recipe(parameters: dict[str, Any], output: Any = None) -> dict[str, Any]:
    return {
        "1": {
            "service": "Join",
            "queue": QUEUE,
            "parameters": parameters,
            "output": output if output is not None else {"complete": 2, "timeout": 3},
        },
        "2": {"queue": JOINED},
        "3": {"queue": TIMED_OUT},
        "start": [[1, {}]],
    }


def parts(recipe: dict[str, Any], payloads: list[Any]) -> list[Outgoing]:
    """One message to the Join step per payload, all of one recipe (one recipe ID)."""
    step = RecipeStep()
    step.start(Recipe({**recipe, "start": [[1, payload] for payload in payloads]}))
    return step.outputs


def send(transport: Transport, messages: list[Outgoing]) -> None:
    transport.publish(messages).result(30)


def payload_of(delivery: Delivery) -> Any:
    return json.loads(delivery.body)["payload"]
