"""Where each data collection of the demo has got to, for the live view (thread-safe)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

WAITING = "waiting"
ACQUIRING = "acquiring"
SUBMITTED = "submitted"
FINDING = "finding spots"
INTEGRATING = "integrating"
RECORDED = "in the database"
INCOMPLETE = "incomplete"


#: States that later news of a single image does not undo.
_LATER = (INTEGRATING, RECORDED, INCOMPLETE)


@dataclass(frozen=True)
class CollectionProgress:
    """One data collection: images taken, images whose spots were found, spots so far."""

    dcid: int
    images: int
    acquired: int = 0
    found: int = 0
    spots: int = 0
    state: str = WAITING
    #: The integration job (its id), and what it measured once the row is written.
    job: object = None
    intensity: int | None = None


class Board:
    """The progress of every data collection, updated by the detector, the submitter and
    the watcher, read by whoever draws it."""

    def __init__(self, dcids: list[int], images: int) -> None:
        self._lock = threading.Lock()
        self._collections = {dcid: CollectionProgress(dcid, images) for dcid in dcids}
        self._seen: dict[int, set[object]] = {dcid: set() for dcid in dcids}
        #: What the run as a whole is doing.
        self.phase = "starting"

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def acquired(self, dcid: int, number: int) -> None:
        self._update(dcid, acquired=number, state=ACQUIRING)

    def submitted(self, dcid: int) -> None:
        self._update(dcid, state=SUBMITTED)

    def found(self, dcid: int, image: object, spots: int) -> None:
        """Spots found on one image (an image seen twice counts once)."""
        with self._lock:
            if image in self._seen[dcid]:
                return
            self._seen[dcid].add(image)
            now = self._collections[dcid]
            state = now.state if now.state in _LATER else FINDING
            self._collections[dcid] = replace(
                now, found=now.found + 1, spots=now.spots + spots, state=state
            )

    def integrating(self, dcid: int, job: object) -> None:
        """The collection's integration job is submitted."""
        with self._lock:
            now = self._collections[dcid]
            state = now.state if now.state in (RECORDED, INCOMPLETE) else INTEGRATING
            self._collections[dcid] = replace(now, job=job, state=state)

    def finished(self, dcid: int, complete: bool, intensity: object = None) -> None:
        self._update(
            dcid,
            state=RECORDED if complete else INCOMPLETE,
            intensity=intensity if isinstance(intensity, int) else None,
        )

    def _update(self, dcid: int, **changes: object) -> None:
        with self._lock:
            self._collections[dcid] = replace(self._collections[dcid], **changes)  # type: ignore[arg-type]

    def snapshot(self) -> list[CollectionProgress]:
        with self._lock:
            return list(self._collections.values())
