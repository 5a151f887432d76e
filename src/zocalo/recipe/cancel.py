"""Cancelling a recipe: one broadcast that each service and wrapper working for it hears.

``zocalo cancel RECIPE_ID`` broadcasts ``{"cancel": RECIPE_ID}`` on the
``zocalo.cancel`` topic (python-zocalo has no cancellation; this is ours).
The cluster submission service cancels the recipe's Slurm jobs and submits no
more for it; a running wrapper of the recipe stops its program. Like every
broadcast, it reaches the listeners connected at the time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zocalo.transport.base import Transport

CANCEL_TOPIC = "zocalo.cancel"


def cancel_message(recipe_id: str) -> str:
    return json.dumps({"cancel": recipe_id})


def cancelled_recipe(body: bytes | str) -> str | None:
    """The recipe ID a cancellation names; None for anything else (never an error)."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    recipe_id = message.get("cancel") if isinstance(message, dict) else None
    return recipe_id if isinstance(recipe_id, str) and recipe_id else None


def broadcast_cancel(transport: Transport, recipe_id: str) -> str:
    """Broadcast the cancellation of ``recipe_id`` on a connected ``transport``; the body."""
    body = cancel_message(recipe_id)
    transport.broadcast(CANCEL_TOPIC, body)
    return body
