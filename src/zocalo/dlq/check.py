"""``zocalo.dlq_check``: which dead-letter queues hold messages, in python-zocalo's words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zocalo.dlq.listing import DLQ_PREFIX, QueueListing


@dataclass(frozen=True)
class DeadLetterCount:
    """The ``dlq.*`` queues that hold messages, and how many each holds."""

    broker: str
    queues: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.queues.values())

    def lines(self) -> list[str]:
        """python-zocalo's report: one line per queue (named without ``dlq.``)."""
        return [
            f"DLQ for {name.removeprefix(DLQ_PREFIX)} contains {count} entries"
            for name, count in self.queues.items()
        ]

    def summary(self) -> str:
        if self.total:
            return f"Total of {self.total} DLQ messages found"
        return "No DLQ messages found"

    def to_json(self) -> dict[str, Any]:
        return {"broker": self.broker, "queues": dict(self.queues), "total": self.total}


def count_dead_letters(listing: QueueListing) -> DeadLetterCount:
    """The non-empty dead-letter queues of ``listing``'s broker."""
    held = {name: count for name, count in listing.dead_letter_queues().items() if count}
    return DeadLetterCount(listing.broker, held)
