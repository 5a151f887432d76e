"""Three small services that make up the demo pipeline.

find spots (per image) -> per-job summary -> record. Results go to a SQLite
results file. Every write is an idempotent upsert, so a redelivered message
(at-least-once delivery) never double counts.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from typing import Any

from zocalo import RecipeStep, Service, handler

_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_results (
    recipe_id TEXT NOT NULL, image INTEGER NOT NULL, spots INTEGER NOT NULL,
    PRIMARY KEY (recipe_id, image));
CREATE TABLE IF NOT EXISTS jobs (
    recipe_id TEXT PRIMARY KEY, images INTEGER NOT NULL, total_spots INTEGER NOT NULL,
    mean_spots REAL NOT NULL);
"""


class ResultsFile:
    """The demo's results database: one connection per service thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        connection = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            self._local.db = connection
        return connection


def count_spots(image: int, size: int, threshold: float) -> int:
    """Make a synthetic image (seeded by its number) and count bright pixels."""
    pixels = random.Random(image)
    return sum(pixels.random() > threshold for _ in range(size * size))


class FindSpots(Service):
    """Per image: count the spots in a synthetic diffraction image."""

    @handler("demo.find_spots", prefetch=20)
    def find_spots(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        size = int(step.parameters.get("size", 24))
        threshold = float(step.parameters.get("threshold", 0.985))
        spots = count_spots(int(payload["image"]), size, threshold)
        self.log.debug("image %s: %d spots", payload["image"], spots)
        step.send({"image": payload["image"], "spots": spots})


class Summary(Service):
    """Per job: collect every image's result; when all are in, send the summary on."""

    _files: dict[str, ResultsFile] = {}

    @handler("demo.summary", prefetch=20)
    def summarise(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        results = self._files.setdefault(
            step.parameters["results"], ResultsFile(step.parameters["results"])
        )
        expected = int(step.parameters["images"])
        with results.db as db:
            db.execute(
                "INSERT OR REPLACE INTO image_results VALUES (?, ?, ?)",
                (step.recipe_id, int(payload["image"]), int(payload["spots"])),
            )
            done, total = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(spots), 0) FROM image_results WHERE recipe_id = ?",
                (step.recipe_id,),
            ).fetchone()
        if done == expected:
            self.log.info("job complete: %d images, %d spots", done, total)
            step.send({"images": done, "total_spots": total, "mean_spots": total / done})


class Record(Service):
    """Per job: write the summary row, then tell whoever waits for the job."""

    _files: dict[str, ResultsFile] = {}

    @handler("demo.record", prefetch=5)
    def record(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        results = self._files.setdefault(
            step.parameters["results"], ResultsFile(step.parameters["results"])
        )
        with results.db as db:
            db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                (step.recipe_id, payload["images"], payload["total_spots"], payload["mean_spots"]),
            )
        step.send({"recipe_id": step.recipe_id, **payload})
