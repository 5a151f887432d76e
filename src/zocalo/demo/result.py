"""What a demo run measured, and whether anything went missing or happened twice."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

#: The stages of the demo's flow, in order, as the results table names them.
STAGES = (
    ("dispatch", "request sent -> images fanned out"),
    ("spot finding", "fanned out -> spots found (per image)"),
    ("join", "last image's spots -> summed up"),
    ("integration", "summed up -> integrated (a wrapped job)"),
    ("database", "integrated -> row written"),
    ("reply", "row written -> reply received"),
    ("end to end", "request sent -> reply received"),
)


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``samples`` (0 when there are none)."""
    if len(samples) < 2:
        return samples[0] if samples else 0.0
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[min(98, max(0, round(fraction * 100) - 1))]


@dataclass
class CollectionOutcome:
    """One data collection: what was taken, what came back, what the database holds."""

    dcid: int
    images: int
    spots_drawn: int
    recipe_id: str = ""
    #: From the reply: images whose spots were found, and the spots on them.
    replied_images: int = 0
    replied_spots: int = 0
    replied: bool = False
    complete: bool = False
    #: What the integration job measured, as the reply carries it (None: no job result).
    intensity: int | None = None
    #: Rows the results table holds for this collection, and the images they count.
    rows: int = 0
    recorded_images: int = 0

    @property
    def lost_images(self) -> int:
        """Images taken but not recorded as spot-found in the database (all of them if the
        collection has no row, or more than one: then it is not known which is right)."""
        recorded = self.recorded_images if self.rows == 1 else 0
        return max(self.images - recorded, 0)


@dataclass
class DemoResult:
    """Everything one run measured."""

    collections: list[CollectionOutcome]
    images_per_collection: int
    workers: int
    broker: str
    site: Path
    sqlite3_command: str
    #: Seconds from the start to the end of the run, and its budget.
    seconds: float = 0.0
    #: Latency samples in milliseconds, by stage name.
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    dead_letters: int = 0
    #: Why the broker's dead-letter queues could not be counted ("" when they were).
    dead_letters_note: str = ""
    #: Replies that came more than once.
    repeated_replies: int = 0
    #: Messages the services handled.
    handled: int = 0

    @property
    def images(self) -> int:
        return sum(outcome.images for outcome in self.collections)

    @property
    def images_recorded(self) -> int:
        return sum(o.recorded_images for o in self.collections if o.rows == 1)

    @property
    def spots_found(self) -> int:
        return sum(outcome.replied_spots for outcome in self.collections)

    @property
    def spots_drawn(self) -> int:
        return sum(outcome.spots_drawn for outcome in self.collections)

    @property
    def completed(self) -> int:
        """Collections replied to as complete and recorded in one row."""
        return sum(1 for o in self.collections if o.replied and o.complete and o.rows == 1)

    @property
    def integrated(self) -> int:
        """Collections whose reply carries their integration job's result."""
        return sum(1 for outcome in self.collections if outcome.intensity is not None)

    @property
    def lost(self) -> int:
        """Images that never made it to the database."""
        return sum(outcome.lost_images for outcome in self.collections)

    @property
    def duplicates(self) -> int:
        """Rows written twice, and replies sent twice."""
        extra_rows = sum(max(outcome.rows - 1, 0) for outcome in self.collections)
        return extra_rows + self.repeated_replies

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.dead_letters == 0
            and self.duplicates == 0
            and self.completed == len(self.collections)
            and self.integrated == len(self.collections)
        )

    def latency(self, stage: str, fraction: float) -> float:
        return percentile(self.latencies_ms.get(stage, []), fraction)
