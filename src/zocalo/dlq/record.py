"""The durable record of dead letters, grouped by fingerprint (Schlockmeister writes it,
``zocalo dlq list`` and ``zocalo dlq reinject --group`` read it).

One SQLite file, ``dead-letters.db``, beside the dead-letter files it indexes (the
purge location). A dead letter is recorded once however often it is delivered: by the
file it was exported to. Private like the files (``0600``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from zocalo.dlq.files import Exported, make_private_directories
from zocalo.dlq.fingerprint import DeadLetterFacts

RECORD_NAME = "dead-letters.db"
#: The storage key python-zocalo's purge uses; the record and its files live there.
LOCATION_KEY = "zocalo.dlq.purge_location"
#: Recipe IDs listed per group.
RECIPE_IDS_SHOWN = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    step INTEGER,
    exception TEXT NOT NULL,
    pattern TEXT NOT NULL,
    example TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    alerted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    group_id INTEGER NOT NULL REFERENCES groups(id),
    file TEXT NOT NULL UNIQUE,
    dead_letter_queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    step INTEGER,
    recipe_id TEXT,
    reason TEXT NOT NULL,
    history TEXT NOT NULL,
    dead_lettered REAL NOT NULL,
    seen REAL NOT NULL,
    reinjected REAL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_group ON dead_letters (group_id);
"""


def default_location(storage: dict[str, Any] | None = None) -> Path:
    """Where a service keeps dead letters: the site configuration's
    ``zocalo.dlq.purge_location``, else ``DLQ`` in the user's data directory (a service's
    working directory is no place for them)."""
    given = (storage or {}).get(LOCATION_KEY)
    if given:
        return Path(given)
    return Path(platformdirs.user_data_dir("zocalo", appauthor=False)) / "DLQ"


@dataclass
class Group:
    """Dead letters that failed the same way."""

    id: int
    fingerprint: str
    queue: str
    step: int | None
    exception: str
    pattern: str
    example: str
    first_seen: float
    last_seen: float
    count: int
    alerted: bool
    #: Recorded and not reinjected since, whose files are still there.
    waiting: int = 0
    recipe_ids: list[str] = field(default_factory=list)
    #: The history (``zocalo-dlq-history``, else ``x-death``) of its latest dead letter.
    history: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "queue": self.queue,
            "step": self.step,
            "exception": self.exception,
            "pattern": self.pattern,
            "example": self.example,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "waiting": self.waiting,
            "recipe_ids": self.recipe_ids,
            "history": self.history,
        }


@dataclass(frozen=True)
class Recorded:
    """What recording one dead letter did."""

    group: Group
    #: False when this dead letter was recorded before (delivered again).
    new_letter: bool
    new_group: bool


class DeadLetterRecord:
    """The record in ``directory`` (created, private, if missing)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / RECORD_NAME
        make_private_directories(directory)
        if not self.path.exists():
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(descriptor, 0o600)
            os.close(descriptor)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeadLetterRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------
    def add(self, facts: DeadLetterFacts, exported: Exported, now: float | None = None) -> Recorded:
        """Record one dead letter (exported to ``exported.path``) in its group."""
        now = time.time() if now is None else now
        with self._lock, self._db:
            db = self._db
            db.execute(
                "INSERT OR IGNORE INTO groups (fingerprint, queue, step, exception, pattern, "
                "example, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    facts.fingerprint,
                    facts.queue,
                    facts.step,
                    facts.exception,
                    facts.pattern,
                    facts.reason,
                    now,
                    now,
                ),
            )
            new_group = db.execute("SELECT changes()").fetchone()[0] == 1
            (group_id,) = db.execute(
                "SELECT id FROM groups WHERE fingerprint = ?", (facts.fingerprint,)
            ).fetchone()
            cursor = db.execute(
                "INSERT OR IGNORE INTO dead_letters (group_id, file, dead_letter_queue, "
                "message_id, queue, step, recipe_id, reason, history, dead_lettered, seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    group_id,
                    str(exported.path),
                    exported.queue,
                    exported.message_id,
                    facts.queue,
                    facts.step,
                    facts.recipe_id,
                    facts.reason,
                    json.dumps(facts.history, default=str),
                    exported.dead_lettered,
                    now,
                ),
            )
            new_letter = cursor.rowcount == 1
            if new_letter:
                db.execute(
                    "UPDATE groups SET count = count + 1, last_seen = ? WHERE id = ?",
                    (now, group_id),
                )
            group = self._group(group_id)
        assert group is not None
        return Recorded(group, new_letter, new_group)

    def mark_alerted(self, group_id: int) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE groups SET alerted = 1 WHERE id = ?", (group_id,))

    def mark_reinjected(self, path: Path, when: float | None = None) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE dead_letters SET reinjected = ? WHERE file = ?",
                (time.time() if when is None else when, str(path)),
            )

    # -- reading ----------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Every group, most recently seen first."""
        with self._lock:
            ids = [
                row[0] for row in self._db.execute("SELECT id FROM groups ORDER BY last_seen DESC")
            ]
            return [group for group in map(self._group, ids) if group is not None]

    def group(self, group_id: int) -> Group | None:
        with self._lock:
            return self._group(group_id)

    def waiting_files(self, group_id: int) -> list[Path]:
        """The files of a group's dead letters not reinjected yet, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT file FROM dead_letters WHERE group_id = ? AND reinjected IS NULL "
                "ORDER BY dead_lettered, id",
                (group_id,),
            ).fetchall()
        return [Path(name) for (name,) in rows if Path(name).exists()]

    def _group(self, group_id: int) -> Group | None:
        row = self._db.execute(
            "SELECT id, fingerprint, queue, step, exception, pattern, example, first_seen, "
            "last_seen, count, alerted FROM groups WHERE id = ?",
            (group_id,),
        ).fetchone()
        if row is None:
            return None
        number, fingerprint, queue, step, exception, pattern, example = row[:7]
        first_seen, last_seen, count, alerted = row[7:]
        group = Group(
            number,
            fingerprint,
            queue,
            step,
            exception,
            pattern,
            example,
            first_seen,
            last_seen,
            count,
            bool(alerted),
        )
        waiting = self._db.execute(
            "SELECT file FROM dead_letters WHERE group_id = ? AND reinjected IS NULL",
            (group_id,),
        ).fetchall()
        group.waiting = sum(1 for (name,) in waiting if Path(name).exists())
        group.recipe_ids = [
            recipe_id
            for (recipe_id,) in self._db.execute(
                "SELECT recipe_id FROM dead_letters WHERE group_id = ? AND recipe_id IS NOT NULL "
                "GROUP BY recipe_id ORDER BY MIN(id) LIMIT ?",
                (group_id, RECIPE_IDS_SHOWN),
            )
        ]
        latest = self._db.execute(
            "SELECT history FROM dead_letters WHERE group_id = ? ORDER BY id DESC LIMIT 1",
            (group_id,),
        ).fetchone()
        group.history = _history(latest[0]) if latest else []
        return group


def _history(text: str) -> list[Any]:
    """A recorded history; a record written by hand or damaged reads as none."""
    try:
        history = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return history if isinstance(history, list) else []
