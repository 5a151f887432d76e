"""The broker file's tables: their schema, its migrations, and opening the file.

Durability: WAL journal with ``synchronous=NORMAL`` by default. A committed
transaction is in the WAL before COMMIT returns, so it survives any process
being killed (SIGKILL, the OOM killer); only an OS crash or power loss can
lose the last transactions. ``?synchronous=full`` also fsyncs the WAL on
every commit, for brokers that must survive power loss, at a cost in
throughput.

Reply queues: ``reply_queues`` names each one and the connection it lives with; it
goes, with its messages, when that connection closes or is reaped. A queue *exists*
(for a droppable message, see ``Outgoing``) while it is in ``known_queues``: some
consumer has read it, or it is a reply queue not yet gone.

Exclusive consumers: ``exclusive_consumers`` lists the consumers that asked to be
a queue's only one; the one with ``holds`` set alone claims from it. Its row goes with
its consumer row (unsubscribed, closed, or reaped once its process died), and the
next standby to claim takes the hold.

Message IDs: ``AUTOINCREMENT`` keeps a row id from ever being handed out twice
in the file's lifetime, so ``broker.db:42`` names one message in every log line
and dead letter. Files made before that are migrated when first opened.

The statements a running broker executes are :class:`~zocalo.transport.sqlite.store.Store`'s.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

from zocalo.errors import ConnectionFailed
from zocalo.transport.sqlite.files import PRIVATE, Permissions, check_local, write_locked

MESSAGES_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    expires_at REAL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    history TEXT,
    owner TEXT,
    lease_until REAL
)
"""

SCHEMA = """
CREATE INDEX IF NOT EXISTS messages_ready
    ON messages (queue, priority DESC, id) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS messages_owned ON messages (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS bindings (
    queue TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    kept_until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    broadcast INTEGER NOT NULL,
    wake TEXT NOT NULL,
    lock_path TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS consumers_queue ON consumers (queue);
CREATE TABLE IF NOT EXISTS known_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept_topics (
    topic TEXT PRIMARY KEY,
    seconds REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept_broadcasts (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    kept_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS kept_broadcasts_by_topic ON kept_broadcasts (topic, kept_at);
CREATE TABLE IF NOT EXISTS exclusive_consumers (
    queue TEXT NOT NULL,
    consumer TEXT NOT NULL,
    holds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, consumer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reply_queues (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL
) WITHOUT ROWID;
"""

SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")


def open_database(
    path: Path,
    lock_fd: int,
    synchronous: str = "normal",
    timeout: float = 30.0,
    permissions: Permissions = PRIVATE,
) -> sqlite3.Connection:
    """A connection to the broker file, creating it and its schema if needed.

    Creation, the switch to WAL and the schema run under the write flock
    (``lock_fd``): processes opening a new file at once would otherwise meet
    SQLite's locks where its busy handler does not wait ("database is locked").
    """
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ConnectionFailed(
            f"synchronous={synchronous!r} is not one of {', '.join(SYNCHRONOUS_LEVELS)}"
        )
    check_local(path)
    try:
        with write_locked(lock_fd):
            permissions.create_file(path)
            db = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                db.execute("PRAGMA journal_size_limit=67108864")
                _create_schema(db)
            except BaseException:
                db.close()
                raise
    except (sqlite3.Error, OSError) as error:
        raise ConnectionFailed(f"cannot open broker file {path}: {error}") from None
    return db


def _schema_names() -> set[str]:
    """Every table and index :data:`SCHEMA` creates."""
    return set(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA))


def _has_schema(db: sqlite3.Connection) -> bool:
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    return _schema_names() <= present


def _create_schema(db: sqlite3.Connection) -> None:
    """Tables and indexes; a ``messages`` table without AUTOINCREMENT is rebuilt with it."""
    row = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
    ).fetchone()
    existing = row[0] if row else None
    if existing is not None and "AUTOINCREMENT" in existing.upper() and _has_schema(db):
        return  # opening a current file writes nothing: a busy writer does not stall it
    db.execute("BEGIN IMMEDIATE")
    try:
        if existing is None:
            db.execute(MESSAGES_TABLE.format(name="messages"))
        elif "AUTOINCREMENT" not in existing.upper():
            db.execute(MESSAGES_TABLE.format(name="messages_unique_ids"))
            db.execute("INSERT INTO messages_unique_ids SELECT * FROM messages")
            db.execute("DROP TABLE messages")
            db.execute("ALTER TABLE messages_unique_ids RENAME TO messages")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT OR IGNORE INTO known_queues SELECT DISTINCT queue FROM consumers "
            "WHERE broadcast = 0"
        )
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
