"""What a dead letter carries, decided once for every transport and the runner.

A message moves to ``dlq.<queue>`` either from the broker (delivered too often,
rejected) or from the service runner (failed its last attempt, malformed). Either
way it carries the same three headers, so the dead-letter tools read one set of
names: why (``zocalo-dlq-reason``), from where (``zocalo-dlq-queue``) and what
happened before (``zocalo-dlq-history``, oldest first: the runner's failure reasons
as text, a broker's returned deliveries as objects with queue, reason, count, time).
The broker's own headers are dropped: RabbitMQ silently discards a message whose
``x-death`` says it has travelled that dead-letter path before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

#: Header names a dead letter carries.
DLQ_REASON_HEADER = "zocalo-dlq-reason"
DLQ_QUEUE_HEADER = "zocalo-dlq-queue"
DLQ_HISTORY_HEADER = "zocalo-dlq-history"

#: Entries of ``zocalo-dlq-history`` kept (the newest); a message that loops for
#: days must not grow without bound.
HISTORY_KEPT = 10

#: Headers the broker owns: RabbitMQ writes them when it dead-letters a message
#: (``x-death`` and every ``x-first-death-*``, ``x-last-death-*``) or counts deliveries.
BROKER_HEADERS = frozenset({"x-death", "x-delivery-count"})
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")

HistoryEntry = str | dict[str, Any]


def is_dead_letter_queue(queue: str) -> bool:
    """Whether ``queue`` holds dead letters. Such a queue has no delivery limit: a dead
    letter handed back (a tool stopped mid-purge) stays, its reason intact."""
    return queue.startswith("dlq.")


def dlq_name(queue: str) -> str:
    """The dead-letter queue of ``queue`` (``dlq.<queue>``, as DLS configures RabbitMQ)."""
    return queue if is_dead_letter_queue(queue) else f"dlq.{queue}"


def without_broker_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``headers`` fit to publish again: without the broker's own.

    RabbitMQ silently drops a message dead-lettered into a queue that its
    ``x-death`` says it was dead-lettered from before without a rejection
    between (cycle detection): a retry carrying its first trip's ``x-death``
    through the TTL wait queues of delays vanishes on the second trip. Our
    own headers (attempts, reasons, the DLQ history) stay.
    """
    return {
        name: value
        for name, value in headers.items()
        if name not in BROKER_HEADERS and not name.startswith(_BROKER_HEADER_PREFIXES)
    }


def history_of(headers: Mapping[str, Any]) -> list[HistoryEntry]:
    """The message's history so far; a foreign or hostile header reads as none."""
    previous = headers.get(DLQ_HISTORY_HEADER)
    if not isinstance(previous, list):
        return []
    return [entry if isinstance(entry, str | dict) else str(entry) for entry in previous]


def with_history(headers: Mapping[str, Any], *entries: HistoryEntry) -> list[HistoryEntry]:
    """The history of ``headers`` with ``entries`` appended, the newest kept."""
    return [*history_of(headers), *entries][-HISTORY_KEPT:]


def delivery_entry(queue: str, reason: str, delivery_count: int) -> dict[str, Any]:
    """One broker-side history entry: a delivery of ``queue`` that came back."""
    return {
        "queue": queue,
        "reason": reason,
        "delivery_count": delivery_count,
        "time": time.time(),
    }


def dead_letter_marks(*, reason: str, queue: str, history: list[HistoryEntry]) -> dict[str, Any]:
    """The three headers that make a message a dead letter of ``queue``."""
    return {
        DLQ_REASON_HEADER: reason,
        DLQ_QUEUE_HEADER: queue,
        DLQ_HISTORY_HEADER: history[-HISTORY_KEPT:],
    }


def dead_letter_headers(
    headers: Mapping[str, Any], *, reason: str, queue: str, history: list[HistoryEntry]
) -> dict[str, Any]:
    """The headers of ``queue``'s message as it enters ``dlq.<queue>``."""
    return without_broker_headers(headers) | dead_letter_marks(
        reason=reason, queue=queue, history=history
    )


def delivery_limit_reason(count: int, limit: int, last: str) -> str:
    """Why the broker side dead-lettered a message it delivered too often."""
    return f"delivered {count} times (limit {limit}); last: {last}"
