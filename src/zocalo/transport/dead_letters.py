"""What a dead letter carries, decided once for every transport and the runner.

A message moves to ``dlq.<queue>`` either from the broker (delivered too often,
rejected) or from the service runner (failed its last attempt, malformed). Either
way it carries the same three headers, so the dead-letter tools read one set of
names: why (``zocalo-dlq-reason``), from where (``zocalo-dlq-queue``) and what
happened before (``zocalo-dlq-history``, oldest first: the runner's failures as
objects with reason and time, a broker's returned deliveries as objects with queue,
reason, count and time). The time of an entry (``at``) is ISO-8601 UTC text: AMQP
carries no floats, and its decimals keep no fraction of an epoch second. Older
entries, which readers still meet in dead letters and files, are plain text (the
runner's reason) or carry epoch seconds as ``time``: :func:`entry_seconds` and
:func:`describe_entry` read every kind.
The broker's own headers are dropped: RabbitMQ silently discards a message whose
``x-death`` says it has travelled that dead-letter path before.
"""

from __future__ import annotations

import datetime
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

#: The key of a history entry's time, ISO-8601 UTC text (see the module docstring).
ENTRY_TIME_KEY = "at"


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


def utc_timestamp(seconds: float | None = None) -> str:
    """``seconds`` (epoch; default now) as ISO-8601 UTC text to the millisecond."""
    moment = datetime.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, datetime.UTC
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def runner_entry(reason: str) -> dict[str, Any]:
    """One runner-side history entry: an attempt that failed, and why."""
    return {"reason": reason, ENTRY_TIME_KEY: utc_timestamp()}


def delivery_entry(queue: str, reason: str, delivery_count: int) -> dict[str, Any]:
    """One broker-side history entry: a delivery of ``queue`` that came back."""
    return {
        "queue": queue,
        "reason": reason,
        "delivery_count": delivery_count,
        ENTRY_TIME_KEY: utc_timestamp(),
    }


#: The latest time (epoch seconds) a dead letter can be dated with: the end of year 9999.
LATEST_SECONDS = 253402300799.0


def calendar_seconds(seconds: float | None) -> float | None:
    """``seconds`` if a calendar can show them (the epoch to :data:`LATEST_SECONDS`), else
    None: times come from headers anyone may write, and NaN or 1e20 made every reader of
    the dead letter (its file's name, ``zocalo dlq list``) fail with a traceback."""
    if seconds is None or not 0 <= seconds <= LATEST_SECONDS:  # (NaN compares False)
        return None
    return seconds


def entry_seconds(entry: Any) -> float | None:
    """When a history entry happened (epoch seconds), if it says (and a calendar can
    show it): its ``at``, or an older entry's (or an ``x-death`` table's) ``time``."""
    if not isinstance(entry, dict):
        return None
    stamp = entry.get(ENTRY_TIME_KEY)
    if isinstance(stamp, str):
        try:
            moment = datetime.datetime.fromisoformat(stamp)
            seconds = moment.replace(tzinfo=moment.tzinfo or datetime.UTC).timestamp()
        except (ValueError, OverflowError):
            return None
        return calendar_seconds(seconds)
    number = entry.get("time")
    if isinstance(number, int | float) and not isinstance(number, bool):
        return calendar_seconds(float(number))
    return None


def describe_entry(entry: Any) -> str:
    """One history entry on one line: its time (when it has one), where and why."""
    if not isinstance(entry, dict):
        return " ".join(str(entry).split())
    seconds = entry_seconds(entry)
    stamp = entry.get(ENTRY_TIME_KEY)
    when = stamp if isinstance(stamp, str) else None
    if when is None and seconds is not None:
        when = utc_timestamp(seconds)
    parts = [when or "(no time)"]
    if entry.get("queue"):
        parts.append(f"{entry['queue']}:")
    parts.append(" ".join(str(entry.get("reason", "")).split()) or "(no reason)")
    count = entry.get("delivery_count", entry.get("count"))
    if isinstance(count, int) and not isinstance(count, bool):
        parts.append(f"(delivery {count})" if "delivery_count" in entry else f"({count} times)")
    return " ".join(parts)


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
