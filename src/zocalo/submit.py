"""Starting work: Dispatcher requests (what zocalo.go sends) and direct recipe starts."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import dumps
from zocalo.transport.base import Outgoing, Transport

#: The Dispatcher's queue.
DISPATCHER_QUEUE = "processing_recipe"


@dataclass
class Submission:
    """Exactly what will be sent: destination, headers and body."""

    queue: str
    headers: dict[str, Any]
    body: Any
    outputs: list[Outgoing] = field(default_factory=list)

    def send(self, transport: Transport, timeout: float = 30.0) -> None:
        """Publish and wait until the broker has accepted every message."""
        transport.publish(self.outputs).result(timeout)


def submitter_headers() -> dict[str, str]:
    """Who and where, as python-zocalo's zocalo.go records it."""
    return {"zocalo.go.user": getpass.getuser(), "zocalo.go.host": socket.gethostname()}


def dispatcher_request(
    recipes: list[str],
    parameters: Mapping[str, Any],
    custom_recipe: Recipe | None = None,
) -> Submission:
    """A request for the Dispatcher: named recipes, parameters, optional inline recipe."""
    body: dict[str, Any] = {"recipes": list(recipes), "parameters": dict(parameters)}
    if custom_recipe is not None:
        custom_recipe.validate()
        body["custom_recipe"] = custom_recipe.to_dict()
    headers = submitter_headers()
    outgoing = Outgoing(DISPATCHER_QUEUE, dumps(body).encode("utf-8"), headers)
    return Submission(DISPATCHER_QUEUE, headers, body, [outgoing])


def direct_start(
    recipe: Recipe,
    parameters: Mapping[str, Any],
    environment: Mapping[str, Any] | None = None,
) -> tuple[str, Submission]:
    """Start ``recipe`` without a Dispatcher: substitute parameters, fresh recipe ID."""
    recipe = recipe.copy()
    recipe.apply_parameters(dict(parameters))
    step = RecipeStep()
    recipe_id = step.start(recipe, environment=environment)
    first = step.outputs[0] if step.outputs else None
    body = first.body.decode() if first else None
    queue = first.destination if first else ""
    return recipe_id, Submission(queue, dict(first.headers) if first else {}, body, step.outputs)
