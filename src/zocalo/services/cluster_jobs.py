"""The cluster submission service's record of its jobs: one small SQLite file.

A job may run for hours; the message that asked for it must not stay
unacknowledged that long (RabbitMQ closes a consumer whose delivery is unacked
past ``consumer_timeout``). So the service writes down what it submitted,
commits (fsync), and only then lets the message be acknowledged. Each row:

* ``key``: the asking message's identity (recipe ID, step, path, payload), so
  that a message delivered again is recognised and never submitted twice;
* ``state``: ``submitting`` (written before asking Slurm: a crash during the
  request leaves it, and the job is looked for by its ``tag`` before any new
  submission), ``submitted`` (``job_id`` known), ``ended`` (reported);
* ``reported_by``: the poll message that reported the end; only that message,
  delivered again because its publish never happened, reports it again;
* ``recipe_id``: which recipe's jobs to cancel.

Cancelled recipes are remembered too (``cancelled``): their jobs are cancelled,
their ends not reported, and their later steps not submitted.

Ended rows and cancelled recipes are kept for :data:`KEEP_ENDED` seconds, then
forgotten (as are submissions that never got a job, refused ones).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocalo.recipe.cancel import CANCEL_WINDOW

#: Seconds an ended job's row (a late copy of its message is still recognised) and a
#: cancelled recipe are kept: as long as a cancellation holds, both cover queued work.
KEEP_ENDED = CANCEL_WINDOW

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    tag TEXT NOT NULL,
    recipe_id TEXT,
    step INTEGER,
    state TEXT NOT NULL,
    job_id INTEGER,
    submitted_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT,
    reported_by TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_recipe ON jobs (recipe_id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS cancelled (
    recipe_id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class JobRecord:
    key: str
    tag: str
    recipe_id: str | None
    step: int | None
    state: str
    job_id: int | None
    submitted_at: float
    ended_at: float | None
    outcome: dict[str, Any] | None
    reported_by: str | None

    @property
    def active(self) -> bool:
        return self.state == "submitted"


class JobBook:
    """The record: a SQLite file, each change committed before the method returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # committed means on disk
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self.forget_ended()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple[Any, ...] | None) -> JobRecord | None:
        if row is None:
            return None
        values = list(row)
        values[8] = json.loads(values[8]) if values[8] else None
        return JobRecord(*values)

    def get(self, key: str) -> JobRecord | None:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,))
            return self._row(cursor.fetchone())

    def intend(self, key: str, tag: str, recipe_id: str | None, step: int | None) -> None:
        """Write down that the job is about to be submitted (before asking Slurm)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO jobs (key, tag, recipe_id, step, state, submitted_at) "
                "VALUES (?, ?, ?, ?, 'submitting', ?)",
                (key, tag, recipe_id, step, time.time()),
            )

    def submitted(self, key: str, job_id: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'submitted', job_id = ?, submitted_at = ? WHERE key = ?",
                (job_id, time.time(), key),
            )

    def ended(self, key: str, outcome: dict[str, Any], reported_by: str) -> None:
        """The job ended and ``reported_by`` (a poll message) reports it."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'ended', ended_at = ?, outcome = ?, reported_by = ? "
                "WHERE key = ?",
                (time.time(), json.dumps(outcome), reported_by, key),
            )

    def active(self) -> list[JobRecord]:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs WHERE state = 'submitted'")
            return [record for row in cursor.fetchall() if (record := self._row(row))]

    def ended_jobs(self) -> list[JobRecord]:
        """Ended jobs still in the record (their ends recorded: the backend may forget them)."""
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs WHERE state = 'ended'")
            return [record for row in cursor.fetchall() if (record := self._row(row))]

    def of_recipe(self, recipe_id: str) -> list[JobRecord]:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs WHERE recipe_id = ?", (recipe_id,))
            return [record for row in cursor.fetchall() if (record := self._row(row))]

    def cancel_recipe(self, recipe_id: str) -> list[JobRecord]:
        """Remember ``recipe_id`` as cancelled; its jobs that may still run."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cancelled (recipe_id, at) VALUES (?, ?)",
                (recipe_id, time.time()),
            )
            cursor = self._db.execute(
                "SELECT * FROM jobs WHERE recipe_id = ? AND state != 'ended'", (recipe_id,)
            )
            return [record for row in cursor.fetchall() if (record := self._row(row))]

    def is_cancelled(self, recipe_id: str | None) -> bool:
        if recipe_id is None:
            return False
        with self._lock:
            cursor = self._db.execute("SELECT 1 FROM cancelled WHERE recipe_id = ?", (recipe_id,))
            return cursor.fetchone() is not None

    def forget_ended(self, older_than: float = KEEP_ENDED) -> int:
        with self._lock:
            self._db.execute("DELETE FROM cancelled WHERE at < ?", (time.time() - older_than,))
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE (state = 'ended' AND ended_at < ?) "
                "OR (state = 'submitting' AND submitted_at < ?)",
                (time.time() - older_than, time.time() - older_than),
            )
            return cursor.rowcount
