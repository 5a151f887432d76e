"""``zocalo.queue_drain SOURCE DEST``: move messages from one queue to another, paced.

Each message is moved with one atomic publish-and-ack (``publish([copy], ack=delivery)``):
it is acknowledged only once the broker has its copy, so a drain stopped or killed at any
moment loses nothing (a message may at worst be in both queues). ``DEST`` ``.`` sends each
recipe message to the queue of the step it points to, as python-zocalo's tool does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zocalo.dlq.errors import DeadLetterError
from zocalo.errors import InvalidMessage
from zocalo.recipe import wire
from zocalo.recipe.wire import RecipeMessage
from zocalo.transport.base import Delivery, Outgoing, Transport, without_broker_headers

#: ``DEST`` meaning "the queue of the recipe step the message points to".
OWN_STEP = "."
#: What python-zocalo's drain and reinject leave out of the headers they send on: the
#: fields a STOMP broker sets on a message it delivers.
STOMP_FIELDS = frozenset(
    {
        "content-length",
        "destination",
        "expires",
        "message-id",
        "original-destination",
        "originalExpiration",
        "subscription",
        "timestamp",
        "redelivered",
    }
)
#: How often an idle drain looks at the clock and at ``stop_now``.
_TICK = 0.1


@dataclass
class Moved:
    """One message moved: where to, and what python-zocalo's tool printed about it."""

    message_id: str
    target: str
    recipe_id: str | None = None
    #: When the message was first sent (ActiveMQ's ``timestamp``), if known.
    sent_at: float | None = None
    #: Extra lines about the step (python-zocalo's cluster submission details).
    details: list[str] = field(default_factory=list)


@dataclass
class DrainResult:
    moved: int
    idle_seconds: float
    #: Delivered but not moved when a stop was asked for (they go back to the queue).
    unprocessed: int = 0


def forwarded_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers a moved message keeps."""
    kept = {name: value for name, value in headers.items() if name not in STOMP_FIELDS}
    return without_broker_headers(kept)


def _recipe_message(delivery: Delivery) -> RecipeMessage | None:
    if not wire.is_recipe_message(delivery.headers):
        return None
    try:
        return wire.decode(delivery.body, delivery.headers, delivery.describe())
    except InvalidMessage:
        return None


def _details(step: Mapping[str, Any], target: str) -> list[str]:
    """python-zocalo's extra lines for a cluster submission step (beamline, directory)."""
    if target != "cluster.submission":
        return []
    parameters = step.get("parameters") or {}
    lines = []
    if isinstance(parameters.get("cluster_project"), str):
        lines.append(f"Beamline {parameters['cluster_project'].upper()}")
    if isinstance(parameters.get("workingdir"), str):
        lines.append(f"Working directory {parameters['workingdir']}")
    return lines


def plan_move(delivery: Delivery, destination: str) -> tuple[Outgoing, Moved]:
    """Where ``delivery`` goes (``destination``, or its step's queue for ``.``)."""
    message = _recipe_message(delivery)
    target = destination
    if destination == OWN_STEP:
        queue_name = message.step.get("queue") if message is not None else None
        if not isinstance(queue_name, str) or not queue_name:
            raise DeadLetterError(
                f"cannot tell where {delivery.describe()} goes: it is not a recipe message "
                "whose step names a queue; it stays where it is (give DEST)"
            )
        target = queue_name
    stamp = delivery.headers.get("timestamp")
    try:
        sent_at = int(stamp) / 1000 if stamp is not None else None
    except (TypeError, ValueError):
        sent_at = None
    moved = Moved(
        delivery.message_id,
        target,
        message.recipe_id if message is not None else None,
        sent_at,
        _details(message.step, target) if message is not None else [],
    )
    copy = Outgoing(target, delivery.body, forwarded_headers(delivery.headers))
    return copy, moved


def drain(
    transport: Transport,
    source: str,
    destination: str,
    *,
    wait: float = 5.0,
    stop: float = 60.0,
    on_moved: Callable[[Moved, int, float], None] | None = None,
    stop_now: threading.Event | None = None,
    timeout: float = 30.0,
) -> DrainResult:
    """Move messages from ``source`` until none came for ``stop`` seconds (0: never), or
    ``stop_now`` is set; ``wait`` seconds between messages. ``on_moved(moved, count,
    seconds since the start)`` after each. A message that cannot be moved raises (it is
    not acknowledged, and returns to ``source``)."""
    stop_now = stop_now or threading.Event()
    arrived: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    subscription = transport.subscribe(source, arrived.put, prefetch=1)
    started = time.monotonic()
    count, idle = 0, 0.0
    try:
        while not stop_now.is_set():
            idle_since = time.monotonic()
            try:
                delivery = arrived.get(timeout=_TICK)
            except queue.Empty:
                idle += time.monotonic() - idle_since
                if stop and idle > stop:
                    break
                continue
            idle = 0.0
            copy, moved = plan_move(delivery, destination)
            transport.publish([copy], ack=delivery).result(timeout)
            count += 1
            if on_moved is not None:
                on_moved(moved, count, time.monotonic() - started)
            stop_now.wait(wait)
    finally:
        transport.unsubscribe(subscription)
    return DrainResult(count, idle, arrived.qsize())
