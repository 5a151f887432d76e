"""Cancelling a recipe: one broadcast that each service and wrapper working for it hears.

``zocalo cancel RECIPE_ID`` broadcasts ``{"cancel": RECIPE_ID, "at": <epoch seconds>}``
on the ``zocalo.cancel`` topic (python-zocalo has no cancellation; this is ours).
Every service then acks and drops the recipe's messages still in its queues
(:mod:`zocalo.service.middleware.cancellation`), the cluster submission service
cancels the recipe's Slurm jobs, and a running wrapper of the recipe stops its
program.

Queued work may wait for days (a queue whose service is down over a weekend),
so a cancellation holds for :data:`CANCEL_WINDOW`, and the broker keeps the
broadcasts that long (``Transport.keep_broadcasts``): a service that starts,
or restarts, within it still hears the cancellations made before, by replaying
the topic. Broadcasts are kept from the first ``zocalo cancel`` or service that
asks the broker to keep them.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, NamedTuple

from zocalo.errors import UnsupportedFeature

if TYPE_CHECKING:
    from zocalo.transport.base import Transport

CANCEL_TOPIC = "zocalo.cancel"
#: Seconds a cancellation holds (and the broker keeps it): a week covers queued work.
CANCEL_WINDOW = 7 * 86400.0


class Cancellation(NamedTuple):
    """A recipe's cancellation, and when it was made (epoch seconds)."""

    recipe_id: str
    at: float


def cancel_message(recipe_id: str, at: float | None = None) -> str:
    return json.dumps({"cancel": recipe_id, "at": time.time() if at is None else at})


def read_cancellation(body: bytes | str, heard_at: float | None = None) -> Cancellation | None:
    """The cancellation ``body`` makes; None for anything else (never an error).

    One without a time (an older ``zocalo cancel``, or written by hand) counts from
    when it was heard, ``heard_at`` (now by default).
    """
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    recipe_id, at = message.get("cancel"), message.get("at")
    if not isinstance(recipe_id, str) or not recipe_id:
        return None
    heard_at = time.time() if heard_at is None else heard_at
    return Cancellation(recipe_id, _seconds(at, heard_at))


def _seconds(at: object, heard_at: float) -> float:
    """``at`` as epoch seconds; ``heard_at`` for none, nonsense, or a time to come (a
    skewed clock must not stretch the window)."""
    if not isinstance(at, int | float) or isinstance(at, bool):
        return heard_at
    try:
        seconds = float(at)
    except OverflowError:
        return heard_at
    return seconds if seconds <= heard_at else heard_at  # (NaN compares False)


def cancelled_recipe(body: bytes | str) -> str | None:
    """The recipe ID a cancellation names; None for anything else (never an error)."""
    cancellation = read_cancellation(body)
    return cancellation.recipe_id if cancellation is not None else None


def keep_cancellations(transport: Transport) -> bool:
    """Ask the broker to keep cancellations for :data:`CANCEL_WINDOW`; False if it cannot."""
    try:
        transport.keep_broadcasts(CANCEL_TOPIC, seconds=CANCEL_WINDOW)
    except UnsupportedFeature:
        return False
    return True


def broadcast_cancel(transport: Transport, recipe_id: str) -> str:
    """Broadcast the cancellation of ``recipe_id`` on a connected ``transport``, kept by
    the broker for :data:`CANCEL_WINDOW` where it can; the body."""
    keep_cancellations(transport)
    body = cancel_message(recipe_id)
    transport.broadcast(CANCEL_TOPIC, body)
    return body
