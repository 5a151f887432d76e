"""Every SQL statement of the running broker, one method each, named for what it does.

A :class:`Store` is one connection's view of the broker file (see ``schema.py``
for the tables): it writes rows as that connection (its id owns the rows it
claims, its wake-up socket and liveness lock are in its consumer rows), and
only its worker thread calls it, inside the transactions the worker opens.

The statements are constant strings: :mod:`sqlite3` keeps each prepared
statement by its text, so the hot path (insert, claim, delete) never prepares
one twice. The methods return what the worker needs next (rows, the queues
written, who to wake); deciding *when* to run them is the worker's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from zocalo.errors import ConnectionFailed
from zocalo.transport.base import QueueStats
from zocalo.transport.dead_letters import (
    dead_letter_headers,
    delivery_entry,
    delivery_limit_reason,
    dlq_name,
    is_dead_letter_queue,
)
from zocalo.transport.messages import Outgoing

log = logging.getLogger(__name__)

#: A broadcast subscription reads its own queue: this prefix and its consumer id.
BROADCAST_PREFIX = "zocalo.broadcast."
#: A broadcast subscription takes at most this many copies per claim.
BROADCAST_BATCH = 1000

#: A claimed row: (id, body, headers, priority, expires_at, delivery_count).
Row = tuple[int, bytes, str, int, float | None, int]

_INSERT = (
    "INSERT INTO messages (queue, body, headers, priority, available_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_CLAIM = """
UPDATE messages SET owner = ?, lease_until = ?, delivery_count = delivery_count + 1
WHERE id IN (SELECT id FROM messages WHERE queue = ? AND owner IS NULL AND available_at <= ?
             ORDER BY priority DESC, id LIMIT ?)
RETURNING id, body, headers, priority, expires_at, delivery_count
"""
_TAKE_BROADCAST = f"""
DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE queue = ? AND owner IS NULL
                                  AND available_at <= ? ORDER BY id LIMIT {BROADCAST_BATCH})
RETURNING id, body, headers, priority, expires_at, delivery_count
"""


def broadcast_queue(consumer_id: str) -> str:
    """The private queue a broadcast subscription reads its copies from."""
    return BROADCAST_PREFIX + consumer_id


class Store:
    """The broker file as one connection reads and writes it, from its worker thread."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        connection_id: str,
        *,
        wake_address: str,
        lock_path: Path,
        visibility_timeout: float,
        delivery_limit: int,
    ) -> None:
        self._db = db
        self.path = path
        self.connection_id = connection_id
        self.wake_address = wake_address
        self.lock_path = lock_path
        self.visibility_timeout = visibility_timeout
        self.delivery_limit = delivery_limit
        self._execute = db.execute
        #: Queues known to have had a consumer on this file (or already warned about).
        self._known_queues: set[str] = set()

    def consumer_id(self, subscription_id: int) -> str:
        """The id of this connection's consumer row for one subscription."""
        return f"{self.connection_id}.{subscription_id}"

    # -- transactions -------------------------------------------------------
    def begin(self) -> None:
        """Start a write transaction (the caller holds the write flock)."""
        self._execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._execute("COMMIT")

    def rollback(self) -> None:
        """Undo the open transaction; a connection that cannot is left to SQLite."""
        with contextlib.suppress(sqlite3.Error):
            self._execute("ROLLBACK")

    def savepoint(self) -> None:
        """Mark where one publish starts inside the open transaction."""
        self._execute("SAVEPOINT publish")

    def undo_savepoint(self) -> None:
        """Undo everything since :meth:`savepoint`; the transaction goes on."""
        self._execute("ROLLBACK TO publish")
        self._execute("RELEASE publish")

    def release_savepoint(self) -> None:
        self._execute("RELEASE publish")

    # -- messages in --------------------------------------------------------
    def insert(self, message: Outgoing) -> None:
        """Queue ``message`` (not a broadcast); warn if no consumer ever read its queue."""
        available = time.time() + (message.delay or 0)
        expires = available + message.expiration if message.expiration is not None else None
        self._execute(
            _INSERT,
            (
                message.destination,
                message.body,
                json.dumps(dict(message.headers)),
                message.priority or 0,
                available,
                expires,
            ),
        )
        if message.destination not in self._known_queues:
            self._check_known(message.destination)

    def insert_broadcast(self, message: Outgoing) -> tuple[list[tuple[str, str]], list[str]]:
        """A copy of ``message`` for every subscriber of its topic and every bound queue.

        Returns whom to wake: (wake address, private queue) of each subscriber, and
        the bound queues (see :meth:`bind`). A binding is kept while its queue has a
        consumer or until it is due; past both it is dropped, with what waited in
        its queue.
        """
        available = time.time() + (message.delay or 0)
        expires = available + message.expiration if message.expiration is not None else None
        headers = json.dumps(dict(message.headers))
        subscribers = self._execute(
            "SELECT id, wake FROM consumers WHERE queue = ? AND broadcast = 1",
            (message.destination,),
        ).fetchall()
        copies: list[tuple[str, str]] = []
        for consumer_id, wake in subscribers:
            private = broadcast_queue(consumer_id)
            self._execute(_INSERT, (private, message.body, headers, 0, available, expires))
            copies.append((wake, private))
        for (queue_name,) in self._execute(
            "SELECT queue FROM bindings WHERE kept_until < ? AND queue NOT IN "
            "(SELECT queue FROM consumers WHERE broadcast = 0)",
            (time.time(),),
        ).fetchall():
            self._execute("DELETE FROM bindings WHERE queue = ?", (queue_name,))
            self.drop_queue(queue_name)
        bound = [
            queue_name
            for (queue_name,) in self._execute(
                "SELECT queue FROM bindings WHERE topic = ?", (message.destination,)
            ).fetchall()
        ]
        for queue_name in bound:
            self._execute(_INSERT, (queue_name, message.body, headers, 0, available, expires))
        self._keep_broadcast(message.destination, message.body, headers, available, expires)
        return copies, bound

    def _keep_broadcast(
        self, topic: str, body: bytes, headers: str, available: float, expires: float | None
    ) -> None:
        """Keep a broadcast to a kept topic (see :meth:`keep`), forgetting those past it."""
        row = self._execute("SELECT seconds FROM kept_topics WHERE topic = ?", (topic,)).fetchone()
        if row is None:
            return
        self._execute(
            "INSERT INTO kept_broadcasts (topic, body, headers, kept_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (topic, body, headers, available, expires),
        )
        now = time.time()
        self._execute(
            "DELETE FROM kept_broadcasts WHERE topic = ? AND (kept_at < ? OR expires_at <= ?)",
            (topic, now - row[0], now),
        )

    def _check_known(self, queue_name: str) -> None:
        """Warn once about a queue no consumer ever read on this file (a mistyped path?)."""
        self._known_queues.add(queue_name)
        if queue_name.startswith("dlq."):
            return
        if self._execute("SELECT 1 FROM known_queues WHERE name = ?", (queue_name,)).fetchone():
            return
        log.warning(
            "no consumer has ever read queue %s on broker file %s; messages wait there "
            "until one does (is this the broker file your services use?)",
            queue_name,
            self.path,
        )

    # -- messages out -------------------------------------------------------
    def claim(self, queue_name: str, now: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` ready rows of ``queue_name`` to this connection."""
        lease_until = now + self.visibility_timeout
        return self._execute(
            _CLAIM, (self.connection_id, lease_until, queue_name, now, limit)
        ).fetchall()

    def take_broadcast_copies(self, queue_name: str, now: float) -> list[Row]:
        """Remove and return the ready copies in a broadcast subscriber's queue."""
        return self._execute(_TAKE_BROADCAST, (queue_name, now)).fetchall()

    def delete_rows(self, row_ids: list[int]) -> None:
        """Forget rows for good (expired messages)."""
        self._db.executemany("DELETE FROM messages WHERE id = ?", [(row,) for row in row_ids])

    def next_due(self, queue_name: str, now: float) -> float | None:
        """When the next delayed message of ``queue_name`` becomes ready (epoch seconds)."""
        (due,) = self._execute(
            "SELECT MIN(available_at) FROM messages WHERE queue = ? AND owner IS NULL "
            "AND available_at > ?",
            (queue_name, now),
        ).fetchone()
        return due

    def delete_owned(self, row_id: int) -> bool:
        """Acknowledge: delete a row this connection holds; False if it is no longer ours."""
        cursor = self._execute(
            "DELETE FROM messages WHERE id = ? AND owner = ?", (row_id, self.connection_id)
        )
        return cursor.rowcount == 1

    def renew_leases(self) -> None:
        """Extend the lease of every row this connection holds (it is alive)."""
        self._execute(
            "UPDATE messages SET lease_until = ? WHERE owner = ?",
            (time.time() + self.visibility_timeout, self.connection_id),
        )

    # -- returning and dead-lettering ---------------------------------------
    def return_rows(
        self, row_ids: list[int], reason: str, *, holder: str | None, dead_letter: bool = False
    ) -> list[str]:
        """Give rows back to their queues, or dead-letter them (limit or ``dead_letter``).

        Only rows ``holder`` (a connection id) still holds are touched, as an ack
        deletes only its own: a holder whose lease was reaped while it stood still
        must not return a row another consumer has claimed since. ``None`` is for
        the reaper's expired leases, found in this same transaction.

        Each row's history records this delivery and ``reason``. Returns the queue
        each row went to (for wake-ups); rows already gone, or no longer
        ``holder``'s, are skipped.
        """
        now = time.time()
        targets: list[str] = []
        select = "SELECT queue, headers, history, delivery_count FROM messages WHERE id = ?"
        if holder is not None:
            select += " AND owner = ?"
        for row_id in row_ids:
            row = self._execute(
                select, (row_id,) if holder is None else (row_id, holder)
            ).fetchone()
            if row is None:
                continue
            queue_name, headers_json, history_json, count = row
            history = json.loads(history_json) if history_json else []
            history.append(delivery_entry(queue_name, reason, count))
            # A dead letter is never dead-lettered again: it stays, its reason intact.
            limited = dead_letter or count >= self.delivery_limit
            if limited and not is_dead_letter_queue(queue_name):
                why = (
                    reason
                    if dead_letter
                    else delivery_limit_reason(count, self.delivery_limit, reason)
                )
                headers = dead_letter_headers(
                    json.loads(headers_json), reason=why, queue=queue_name, history=history
                )
                target = dlq_name(queue_name)
                self._execute(
                    "UPDATE messages SET queue = ?, headers = ?, history = ?, owner = NULL, "
                    "lease_until = NULL, delivery_count = 0, available_at = ? WHERE id = ?",
                    (target, json.dumps(headers), json.dumps(history), now, row_id),
                )
            else:
                target = queue_name
                self._execute(
                    "UPDATE messages SET history = ?, owner = NULL, lease_until = NULL, "
                    "available_at = ? WHERE id = ?",
                    (json.dumps(history), now, row_id),
                )
            targets.append(target)
        return targets

    def rows_owned_by(self, connection_id: str) -> list[int]:
        return [
            row
            for (row,) in self._execute("SELECT id FROM messages WHERE owner = ?", (connection_id,))
        ]

    def expired_leases(self) -> list[int]:
        """Rows other connections hold past their lease (hung consumers)."""
        return [
            row
            for (row,) in self._execute(
                "SELECT id FROM messages "
                "WHERE owner IS NOT NULL AND owner != ? AND lease_until < ?",
                (self.connection_id, time.time()),
            )
        ]

    # -- consumers, bindings and queues -------------------------------------
    def add_consumer(
        self, consumer_id: str, destination: str, broadcast: bool, exclusive: bool = False
    ) -> None:
        """Register a consumer of this connection: publishers wake it, reapers judge it."""
        self._execute(
            "INSERT INTO consumers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                consumer_id,
                destination,
                int(broadcast),
                self.wake_address,
                str(self.lock_path),
                os.getpid(),
                time.time(),
            ),
        )
        if not broadcast:
            self._execute("INSERT OR IGNORE INTO known_queues VALUES (?)", (destination,))
            self._known_queues.add(destination)
        if exclusive:
            self._execute(
                "INSERT INTO exclusive_consumers (queue, consumer) VALUES (?, ?)",
                (destination, consumer_id),
            )

    def remove_consumer(self, consumer_id: str) -> str | None:
        """Unregister a consumer; the queue it held exclusively, if any (to wake its
        standbys)."""
        self._execute("DELETE FROM consumers WHERE id = ?", (consumer_id,))
        held = self._execute(
            "DELETE FROM exclusive_consumers WHERE consumer = ? RETURNING queue, holds",
            (consumer_id,),
        ).fetchone()
        return held[0] if held is not None and held[1] else None

    def remove_consumers_of(self, connection_id: str) -> list[str]:
        """Drop every consumer row of a dead connection, and its broadcast copies; the
        queues it held exclusively."""
        pattern = connection_id.replace("_", "\\_").replace("%", "\\%") + ".%"
        released: list[str] = []
        for (consumer_id,) in self._execute(
            "SELECT id FROM consumers WHERE id LIKE ? ESCAPE '\\'", (pattern,)
        ).fetchall():
            if (queue_name := self.remove_consumer(consumer_id)) is not None:
                released.append(queue_name)
            self.drop_queue(broadcast_queue(consumer_id))
        return released

    def exclusive_blocker(self, consumer_id: str, queue_name: str, exclusive: bool) -> str | None:
        """Who keeps a consumer from claiming ``queue_name`` (it stands by), or None.

        The exclusive consumer holding the queue blocks every other; with none, an
        exclusive consumer takes the hold, unless non-exclusive ones read the queue
        (it waits until they have gone).
        """
        holder = self._execute(
            "SELECT consumer FROM exclusive_consumers WHERE queue = ? AND holds = 1",
            (queue_name,),
        ).fetchone()
        if holder is not None:
            return None if holder[0] == consumer_id else f"exclusive consumer {holder[0]}"
        if not exclusive:
            return None
        (sharing,) = self._execute(
            "SELECT COUNT(*) FROM consumers WHERE queue = ? AND broadcast = 0 AND id NOT IN "
            "(SELECT consumer FROM exclusive_consumers WHERE queue = ?)",
            (queue_name, queue_name),
        ).fetchone()
        if sharing:
            return f"{sharing} non-exclusive consumer(s)"
        self._execute(
            "UPDATE exclusive_consumers SET holds = 1 WHERE queue = ? AND consumer = ?",
            (queue_name, consumer_id),
        )
        return None

    def drop_queue(self, queue_name: str) -> None:
        """Delete every message of ``queue_name``."""
        self._execute("DELETE FROM messages WHERE queue = ?", (queue_name,))

    def wake_addresses(self, queue_name: str) -> list[str]:
        """The wake-up sockets of the connections consuming ``queue_name``."""
        return [
            wake
            for (wake,) in self._execute(
                "SELECT DISTINCT wake FROM consumers WHERE queue = ? AND broadcast = 0",
                (queue_name,),
            )
        ]

    def keep(self, topic: str, seconds: float) -> None:
        """Keep broadcasts to ``topic`` for ``seconds`` (a kept topic keeps its length)."""
        self._execute("INSERT OR IGNORE INTO kept_topics VALUES (?, ?)", (topic, seconds))

    def replay(self, topic: str, queue_name: str, seconds: float) -> None:
        """Copy the broadcasts kept for ``topic`` of the last ``seconds`` into
        ``queue_name`` (a new subscriber's), oldest first."""
        self._execute(
            "INSERT INTO messages (queue, body, headers, priority, available_at, expires_at) "
            "SELECT ?, body, headers, 0, kept_at, expires_at FROM kept_broadcasts "
            "WHERE topic = ? AND kept_at >= ? AND (expires_at IS NULL OR expires_at > ?) "
            "ORDER BY id",
            (queue_name, topic, time.time() - seconds, time.time()),
        )

    def queue_exists(self, queue_name: str) -> bool:
        """Whether a droppable message may go to ``queue_name``: a consumer has read it,
        or it is a reply queue not yet gone (see ``schema.py``)."""
        found = self._execute("SELECT 1 FROM known_queues WHERE name = ?", (queue_name,))
        return found.fetchone() is not None

    def add_reply_queue(self, queue_name: str) -> str | None:
        """Make ``queue_name`` a reply queue of this connection; why not, if it cannot be."""
        owner = self._execute(
            "SELECT owner FROM reply_queues WHERE name = ?", (queue_name,)
        ).fetchone()
        if owner is not None and owner[0] == self.connection_id:
            return None  # ours already
        waiting = self._execute(
            "SELECT 1 FROM messages WHERE queue = ? AND owner IS NULL LIMIT 1", (queue_name,)
        ).fetchone()
        if owner is not None or waiting is not None or self.queue_exists(queue_name):
            return f"queue {queue_name!r} exists already: a reply queue needs a new name"
        self._execute("INSERT INTO reply_queues VALUES (?, ?)", (queue_name, self.connection_id))
        self._execute("INSERT INTO known_queues VALUES (?)", (queue_name,))
        return None

    def drop_reply_queues_of(self, connection_id: str) -> None:
        """Drop the reply queues of a connection that closed or died, with their messages."""
        self._drop_reply_queues(
            self._execute(
                "DELETE FROM reply_queues WHERE owner = ? RETURNING name", (connection_id,)
            ).fetchall()
        )

    def drop_reply_queue(self, queue_name: str) -> None:
        """Drop ``queue_name``, with its messages, if it is a reply queue of this connection."""
        self._drop_reply_queues(
            self._execute(
                "DELETE FROM reply_queues WHERE name = ? AND owner = ? RETURNING name",
                (queue_name, self.connection_id),
            ).fetchall()
        )

    def _drop_reply_queues(self, dropped: list[tuple[str]]) -> None:
        for (queue_name,) in dropped:
            self._execute("DELETE FROM known_queues WHERE name = ?", (queue_name,))
            self._known_queues.discard(queue_name)
            self.drop_queue(queue_name)

    def bind(self, queue_name: str, topic: str, keep_for: float) -> None:
        """Copy broadcasts to ``topic`` into ``queue_name``; kept ``keep_for`` s unconsumed."""
        self._execute(
            "INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)",
            (queue_name, topic, time.time() + keep_for),
        )

    def other_connections(self) -> set[str]:
        """Every other connection that holds rows or has consumers on this file."""
        prefix = f"{self.connection_id}."
        connections = {
            owner
            for (owner,) in self._execute(
                "SELECT DISTINCT owner FROM messages WHERE owner IS NOT NULL"
            )
        }
        for (consumer_id,) in self._execute("SELECT id FROM consumers"):
            if not consumer_id.startswith(prefix):
                connections.add(consumer_id.rsplit(".", 1)[0])
        connections.update(
            owner for (owner,) in self._execute("SELECT DISTINCT owner FROM reply_queues")
        )
        connections.discard(self.connection_id)
        return connections

    # -- the file -----------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def checkpoint(self, *, restart: bool) -> None:
        """Fold the WAL into the file: PASSIVE never waits; RESTART waits for readers."""
        self._execute(f"PRAGMA wal_checkpoint({'RESTART' if restart else 'PASSIVE'})")


def read_queue_stats(path: Path) -> list[QueueStats]:
    """Per queue: ready, delayed, in flight and consumers, read on a connection of its own.

    A queue with consumers and no messages is listed too; broadcast copies are not.
    """
    try:
        return _queue_stats(path)
    except sqlite3.Error as error:
        raise ConnectionFailed(f"cannot read broker file {path}: {error}") from None


def _queue_stats(path: Path) -> list[QueueStats]:
    # Read-only: a missing file is an error, never a new one with the umask's mode.
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", timeout=30, uri=True)
    try:
        now = time.time()
        rows = db.execute(
            "SELECT queue, SUM(owner IS NULL AND available_at <= ?), "
            "SUM(owner IS NULL AND available_at > ?), SUM(owner IS NOT NULL) "
            "FROM messages WHERE queue NOT LIKE 'zocalo.broadcast.%' GROUP BY queue",
            (now, now),
        ).fetchall()
        consumers = dict(
            db.execute(
                "SELECT queue, COUNT(*) FROM consumers WHERE broadcast = 0 GROUP BY queue"
            ).fetchall()
        )
    finally:
        db.close()
    stats = {
        name: QueueStats(name, ready, delayed, in_flight, consumers.get(name, 0))
        for name, ready, delayed, in_flight in rows
    }
    for name, count in consumers.items():
        stats.setdefault(name, QueueStats(name, consumers=count))
    return [stats[name] for name in sorted(stats)]
