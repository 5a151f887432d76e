"""The demo's simulated detector: it writes the images of a data collection, one file each,
in order, at its frame rate (the images are drawn by :mod:`zocalo.examples.diffraction`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zocalo.examples.diffraction import draw, image_path, write_pgm

#: The image files' names (ISPyB's style of template: the ``#`` are the image number).
TEMPLATE = "image_#####.pgm"


@dataclass(frozen=True)
class Collection:
    """One data collection as acquired, and how many spots the detector drew on it."""

    dcid: int
    directory: Path
    template: str
    first: int
    last: int
    started_at: float
    finished_at: float
    spots_drawn: int

    @property
    def images(self) -> int:
        return self.last - self.first + 1


class Detector:
    """Writes data collections under ``root``, ``frame_rate`` images per second at most."""

    def __init__(self, root: Path, frame_rate: float = 50.0) -> None:
        if not frame_rate > 0:
            raise ValueError(f"a frame rate must be above 0, not {frame_rate!r}")
        self.root = root
        self.frame_rate = frame_rate

    def acquire(
        self, dcid: int, images: int, on_image: Callable[[int], None] | None = None
    ) -> Collection:
        """Take ``images`` images (``on_image(number)`` after each is on disk)."""
        directory = self.root / f"dc{dcid}"
        directory.mkdir(parents=True, exist_ok=True)
        started, clock = time.time(), time.monotonic()
        spots = 0
        for number in range(1, images + 1):
            time.sleep(max(0.0, clock + (number - 1) / self.frame_rate - time.monotonic()))
            image, drawn = draw(f"{dcid}:{number}")
            write_pgm(image_path(directory, TEMPLATE, number), image)
            spots += drawn
            if on_image is not None:
                on_image(number)
        return Collection(dcid, directory, TEMPLATE, 1, images, started, time.time(), spots)
