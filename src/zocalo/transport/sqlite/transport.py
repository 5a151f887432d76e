"""The embedded broker: ``sqlite:///path/to/broker.db``, shared by processes on one machine.

Each transport object is one connection. One worker thread owns its SQLite
connection and does everything in batches: every publish, ack and nack
queued since its last turn, and the claiming of new deliveries for every
subscription with room in its prefetch window, go into ONE ``BEGIN
IMMEDIATE`` transaction (group commit). Callbacks run on a second thread so a
slow callback never holds the broker file.

Crash safety: rows a consumer holds carry its connection id and a lease. A
dead connection is found through its liveness flock (fast); a hung one
through its lease running out (the worker renews leases while it lives).
Either way the rows return to their queue, marked redelivered, or go to
``dlq.<queue>`` past the delivery limit.

A failed transaction (disk full, I/O error) fails the publishes in it; its
acks and nacks are kept and retried until they go through, so no row stays
leased to a living consumer forever.

The broker file is watched: deleted or replaced under a running connection
(its inode changed), the connection says so and reopens the file the path now
names, where new work goes.

URL options (see :data:`OPTIONS`; anything else is refused): ``synchronous``
(normal|full, see ``store.py``), ``visibility_timeout`` (lease seconds, default 60,
at least 1), ``reap_interval`` (seconds between dead-consumer checks, default 0.5),
``delivery_limit``, ``group`` (share the broker's files with one group, see
``store.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import select
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zocalo.errors import ConnectionFailed, InvalidURL, PublishFailed, TransportError
from zocalo.transport.base import (
    DEFAULT_DELIVERY_LIMIT,
    Acks,
    Callback,
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    QueueStats,
    Subscription,
    Transport,
    deliveries_to_ack,
    take_all,
)
from zocalo.transport.dead_letters import (
    dead_letter_headers,
    delivery_entry,
    delivery_limit_reason,
    dlq_name,
)
from zocalo.transport.options import Option, parse_options, split_url
from zocalo.transport.registry import redact_url
from zocalo.transport.sqlite.signals import LivenessLock, WakeSender, WakeSocket, holder_is_dead
from zocalo.transport.sqlite.store import (
    SYNCHRONOUS_LEVELS,
    Permissions,
    file_identity,
    open_store,
    write_locked,
)

log = logging.getLogger(__name__)

BROADCAST_PREFIX = "zocalo.broadcast."
CHECKPOINT_INTERVAL = 10.0
#: Bounds of the wait before acks and nacks of a failed transaction are tried again.
RETRY_DELAY = (0.05, 2.0)
WAL_RESET_BYTES = 16 * 1024 * 1024
_CLAIM_SQL = """
UPDATE messages SET owner = ?, lease_until = ?, delivery_count = delivery_count + 1
WHERE id IN (SELECT id FROM messages WHERE queue = ? AND owner IS NULL AND available_at <= ?
             ORDER BY priority DESC, id LIMIT ?)
RETURNING id, body, headers, priority, expires_at, delivery_count
"""
_TAKE_BROADCAST_SQL = """
DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE queue = ? AND owner IS NULL
                                  AND available_at <= ? ORDER BY id LIMIT 1000)
RETURNING id, body, headers, priority, expires_at, delivery_count
"""


#: The URL options ``sqlite:///path?...`` understands. A lease must outlast a round of
#: renewals (every third of it), or two consumers would hold one message at once.
OPTIONS = (
    Option("delivery_limit", int, DEFAULT_DELIVERY_LIMIT, at_least=1),
    Option("visibility_timeout", float, 60.0, at_least=1),
    Option("reap_interval", float, 0.5, at_least=0.05),  # 0 would re-poll in a hot loop
    Option("synchronous", str, "normal", choices=SYNCHRONOUS_LEVELS),
    Option("group", str, None),
)


def broker_path(url: str) -> Path:
    """The file a ``sqlite://`` URL names (``sqlite:///abs/path`` or ``sqlite://rel/path``)."""
    parts = split_url(url)
    path = parts.netloc + parts.path
    if not path:
        raise InvalidURL(
            f"{redact_url(url)!r} names no broker file (expected sqlite:///path/to/broker.db)"
        )
    # Absolute: a service that changes its working directory keeps its broker file.
    return Path(path).expanduser().absolute()


@dataclass(eq=False)
class _Consumer:
    """Worker-side state of one subscription."""

    subscription: Subscription
    consumer_id: str
    queue: str  # the queue rows are claimed from (private for broadcasts)
    inflight: dict[int, Delivery] = field(default_factory=dict)
    dirty: bool = True  # there may be messages to claim
    saturated: bool = False  # the last claim filled the window: maybe more waiting
    due: float | None = None  # epoch seconds of the next delayed message

    @property
    def room(self) -> int:
        if not self.subscription.active:
            return 0
        if self.subscription.broadcast:
            return 1000
        return self.subscription.prefetch - len(self.inflight)


@dataclass
class _Op:
    kind: str
    messages: Sequence[Outgoing] = ()
    #: The delivery to ack or nack ("ack", "nack").
    delivery: Delivery | None = None
    #: The deliveries a publish acks, in the same transaction as its inserts.
    acks: Sequence[Delivery] = ()
    consumer: _Consumer | None = None
    requeue: bool = True
    reason: str = ""
    future: Confirmation | None = None
    #: For "bind": (queue, topic, seconds it is kept without a consumer).
    binding: tuple[str, str, float] | None = None


class _Pokes:
    """Wake-ups owed after a commit; each queue's consumers looked up once per turn."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.targets: set[tuple[str, str]] = set()
        self._wakes: dict[str, list[str]] = {}

    def add(self, wake: str, queue_name: str) -> None:
        self.targets.add((wake, queue_name))

    def queue(self, queue_name: str) -> None:
        """Wake every consumer of ``queue_name``."""
        wakes = self._wakes.get(queue_name)
        if wakes is None:
            wakes = self._wakes[queue_name] = [
                wake
                for (wake,) in self.db.execute(
                    "SELECT DISTINCT wake FROM consumers WHERE queue = ? AND broadcast = 0",
                    (queue_name,),
                )
            ]
        self.targets.update((wake, queue_name) for wake in wakes)


class SqliteTransport(Transport):
    """One connection to a broker file shared by every process on this machine."""

    schemes = ("sqlite",)
    serial_callbacks = True
    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.EXPIRATION,
            Capability.DELIVERY_COUNT,
            Capability.DEAD_LETTER,
            Capability.CROSS_PROCESS,
            Capability.DELAYED_BROADCAST,
        }
    )

    def __init__(
        self,
        url: str,
        *,
        delivery_limit: int | None = None,
        visibility_timeout: float | None = None,
        reap_interval: float | None = None,
        synchronous: str | None = None,
        group: str | None = None,
    ) -> None:
        options = parse_options(
            url,
            OPTIONS,
            {
                "delivery_limit": delivery_limit,
                "visibility_timeout": visibility_timeout,
                "reap_interval": reap_interval,
                "synchronous": synchronous,
                "group": group,
            },
        )
        super().__init__(url, delivery_limit=options["delivery_limit"])
        self.path = broker_path(url)
        self.visibility_timeout: float = options["visibility_timeout"]
        self.reap_interval: float = options["reap_interval"]
        self.synchronous: str = options["synchronous"]
        self.group: str | None = options["group"] or None
        self.connection_id = self._new_connection_id()
        self._lock = threading.Lock()
        self._consumers: dict[int, _Consumer] = {}
        self._ops: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._callbacks: queue.SimpleQueue[tuple[_Consumer, Delivery] | None] = queue.SimpleQueue()
        self._state = "new"
        self._db: sqlite3.Connection | None = None
        #: Acks and nacks of failed transactions, tried again at ``_retry_at``.
        self._retry: list[_Op] = []
        self._retry_at = 0.0
        self._retry_delay = 0.0
        #: Queues known to have had a consumer on this file (or already warned about).
        self._known_queues: set[str] = set()

    @staticmethod
    def _new_connection_id() -> str:
        return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"

    # -- connection ---------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._state == "open"

    @property
    def locks_directory(self) -> Path:
        return self.path.with_name(self.path.name + ".locks")

    def connect(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise ConnectionFailed(f"{self.url}: a closed transport cannot reconnect")
        self._permissions = Permissions.for_group(self.group)
        self._open_files()
        self._wake = WakeSocket(self.path, self.connection_id, self._permissions)
        self._sender = WakeSender()
        self._kick_read, self._kick_write = socket.socketpair()
        self._kick_pending = False
        self._kick_read.setblocking(False)
        self._kick_write.setblocking(False)
        now = time.monotonic()
        self._next_reap = now
        self._next_renewal = now + self.visibility_timeout / 3
        self._next_checkpoint = now + CHECKPOINT_INTERVAL
        self._state = "open"
        self._worker = threading.Thread(target=self._work, name="sqlite-broker", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="sqlite-callbacks", daemon=True
        )
        self._worker.start()
        self._dispatcher.start()

    def _open_files(self) -> None:
        """The write lock, the broker file and this connection's liveness lock."""
        try:
            self._permissions.make_directories(self.path.parent)
            self._write_lock = self._permissions.open_file(
                self.path.with_name(self.path.name + ".write-lock")
            )
        except OSError as error:
            raise ConnectionFailed(f"cannot create broker file {self.path}: {error}") from None
        try:
            self._db = open_store(
                self.path, self._write_lock, self.synchronous, permissions=self._permissions
            )
            self._identity = file_identity(self.path)
            self._liveness = LivenessLock(
                self.locks_directory, self.connection_id, self._permissions
            )
        except BaseException:
            if self._db is not None:
                self._db.close()
                self._db = None
            os.close(self._write_lock)
            raise

    def close(self) -> None:
        """Unregister, return every unacknowledged delivery, and close the file."""
        if self._state == "failed":  # the worker died: clean up from here
            self._finish()
            self._state = "closed"
            return
        if self._state != "open":
            self._state = "closed"
            return
        done = Confirmation()
        self._submit(_Op("close", future=done))
        with contextlib.suppress(Exception):
            done.result(30)
        self._finish()

    def abort(self) -> None:
        """Vanish as a killed process would: no cleanup; others reap what we held."""
        if self._state == "failed":  # the worker died: still let go of the files
            self._state = "aborting"
            self._finish()
            return
        if self._state != "open":
            return
        self._state = "aborting"
        self._kick()
        self._finish()

    def _finish(self) -> None:
        failed = self._state == "failed"
        self._state = "closed"
        self._kick()
        self._callbacks.put(None)
        for thread in (self._worker, self._dispatcher):
            if thread is not threading.current_thread():
                thread.join(10)
        if failed and self._db is not None:
            self._return_everything()
        self._liveness.release()
        for closable in (self._wake, self._sender, self._kick_read, self._kick_write):
            closable.close()
        if self._db is not None:
            self._db.close()
            self._db = None
            os.close(self._write_lock)

    def _require_open(self) -> None:
        if self._state != "open":
            raise ConnectionFailed(f"{self.url}: transport is not connected")

    def _kick(self) -> None:
        """Wake the worker; one pending byte is enough however many operations wait."""
        if self._kick_pending:
            return
        self._kick_pending = True
        with contextlib.suppress(OSError):
            self._kick_write.send(b"k")

    def _submit(self, op: _Op) -> None:
        if self._state == "failed":  # no worker will ever take it: fail it now
            self._fail([op], "broker worker failed")
            return
        self._ops.put(op)
        self._kick()

    # -- consuming ----------------------------------------------------------
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> Subscription:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        subscription = Subscription(
            self._next_subscription_id(), queue, callback, prefetch=prefetch
        )
        return self._register(subscription, queue)

    def subscribe_broadcast(self, topic: str, callback: Callback) -> Subscription:
        subscription = Subscription(self._next_subscription_id(), topic, callback, broadcast=True)
        consumer_id = f"{self.connection_id}.{subscription.id}"
        return self._register(subscription, BROADCAST_PREFIX + consumer_id)

    def _register(self, subscription: Subscription, claim_queue: str) -> Subscription:
        self._require_open()
        consumer = _Consumer(subscription, f"{self.connection_id}.{subscription.id}", claim_queue)
        done = Confirmation()
        self._submit(_Op("subscribe", consumer=consumer, future=done))
        done.result(30)
        return subscription

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        self._require_open()
        done = Confirmation()
        self._submit(_Op("bind", binding=(queue, topic, expires), future=done))
        done.result(30)

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            consumer = self._consumers.get(subscription.id)
        if consumer is None or not subscription.active:
            raise TransportError(f"{subscription.describe()} is not subscribed")
        subscription.active = False
        done = Confirmation()
        self._submit(_Op("unsubscribe", consumer=consumer, future=done))
        done.result(30)

    def _take_inflight(self, delivery: Delivery) -> _Consumer:
        """Forget ``delivery`` locally, or raise if it is not awaiting settlement."""
        self._require_open()
        with self._lock:
            consumer = self._consumers.get(delivery.subscription.id)
            if (
                consumer is None
                or not delivery.ackable
                or consumer.inflight.get(delivery.receipt) is not delivery
            ):
                raise TransportError(
                    f"{delivery.describe()} is not awaiting acknowledgement "
                    "(already settled, not ackable, or its subscription is gone)"
                )
            del consumer.inflight[delivery.receipt]
            if consumer.saturated:
                consumer.dirty = True
        return consumer

    def _restore_inflight(self, delivery: Delivery) -> None:
        with self._lock:
            consumer = self._consumers.get(delivery.subscription.id)
            if consumer is not None:
                consumer.inflight[delivery.receipt] = delivery

    def _ack(self, delivery: Delivery) -> None:
        self._take_inflight(delivery)
        self._submit(_Op("ack", delivery=delivery))

    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        self._take_inflight(delivery)
        self._submit(_Op("nack", delivery=delivery, requeue=requeue, reason=reason or "rejected"))

    # -- publishing ---------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        self._require_open()
        for message in messages:
            self.check_supported(message)
        acks = deliveries_to_ack(ack)
        take_all(acks, self._take_inflight, self._restore_inflight)
        confirmation = Confirmation()
        self._submit(_Op("publish", messages=list(messages), acks=acks, future=confirmation))
        return confirmation

    # -- the worker thread --------------------------------------------------
    def _work(self) -> None:
        try:
            while self._state == "open":
                self._wait(self._timeout())
                ops = self._drain_ops()
                if self._state != "open":
                    self._fail(ops, "transport aborted")
                    return
                closing = any(op.kind == "close" for op in ops)
                if self._retry and (closing or time.monotonic() >= self._retry_at):
                    ops, self._retry = self._retry + ops, []
                self._turn(ops)
                if closing:
                    return
        except Exception as error:
            self._state = "failed"
            self._fail(self._drain_ops(), "broker worker failed")
            # One line, and the owner is told: a runner waiting for deliveries would
            # otherwise sit idle forever on a connection that no longer works.
            self.report_failure(
                f"broker file {self.path}: the connection failed and is closed "
                f"({type(error).__name__}: {error})"
            )

    def _return_everything(self) -> None:
        """After the worker died: unregister and return held rows now, not at lease end."""
        db = self._db
        assert db is not None
        pokes = _Pokes(db)
        try:
            with write_locked(self._write_lock):
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._apply(db, _Op("close"), pokes)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as error:
            log.warning(
                "could not return the messages %s held in %s (%s); other connections "
                "will once its lock is released",
                self.connection_id,
                self.path,
                error,
            )
            return
        for address, queue_name in pokes.targets:
            self._sender.poke(address, queue_name)

    def _timeout(self) -> float:
        now = time.monotonic()
        wall = time.time()
        deadlines = [self._next_reap, self._next_renewal, self._next_checkpoint]
        if self._retry:
            deadlines.append(self._retry_at)
        with self._lock:
            for consumer in self._consumers.values():
                if consumer.dirty and consumer.room > 0:
                    return 0.0
                if consumer.due is not None:
                    deadlines.append(now + (consumer.due - wall))
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> None:
        readable, _, _ = select.select([self._wake, self._kick_read], [], [], timeout)
        if self._kick_read in readable:
            with contextlib.suppress(BlockingIOError):
                while self._kick_read.recv(4096):
                    pass
            # Cleared after reading the bytes and before draining the operations:
            # a submit that saw it set has its operation drained below; any later
            # submit sends a byte of its own.
            self._kick_pending = False
        if self._wake in readable:
            poked, maybe_lost = self._wake.drain()
            with self._lock:
                for consumer in self._consumers.values():
                    if maybe_lost or consumer.queue in poked:
                        consumer.dirty = True

    def _drain_ops(self) -> list[_Op]:
        ops: list[_Op] = []
        with contextlib.suppress(queue.Empty):
            while True:
                ops.append(self._ops.get_nowait())
        return ops

    def _fail(self, ops: list[_Op], why: str) -> None:
        for op in ops:
            if op.future is not None and not op.future.done():
                op.future.set_exception(ConnectionFailed(f"{self.url}: {why}"))

    def _turn(self, ops: list[_Op]) -> None:
        """One transaction: apply queued operations, claim deliveries, housekeeping."""
        db = self._db
        assert db is not None
        now_monotonic = time.monotonic()
        reap = now_monotonic >= self._next_reap or any(op.kind == "reap" for op in ops)
        if reap and self._identity != file_identity(self.path):
            self._reopen()
            db = self._db
            assert db is not None
        dead = self._dead_connections() if reap else []
        with self._lock:
            # The reaper's turn also looks at every queue with room: the fallback
            # for a wake-up lost on its way (a full socket, a publisher killed
            # between its commit and its pokes).
            claimers = [
                c
                for c in self._consumers.values()
                if c.room > 0 and (reap or c.dirty or (c.due is not None and c.due <= time.time()))
            ]
        if not ops and not claimers and not reap and now_monotonic < self._next_renewal:
            self._maybe_checkpoint(now_monotonic)
            return
        pokes = _Pokes(db)
        results: list[tuple[_Op, BaseException | None]] = []
        claimed: list[tuple[_Consumer, Delivery]] = []
        # Writers queue on a flock rather than on SQLite's busy handler, which sleeps
        # 1, 2, 5, 10 ... ms between retries: under contention that showed as p99 spikes.
        # The kernel hands the lock over at once and drops it if a holder dies.
        fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in ops:
                results.append((op, self._apply(db, op, pokes)))
            for consumer in claimers:
                claimed.extend(self._claim(db, consumer))
            if reap:
                self._reap(db, dead, pokes)
                self._next_reap = now_monotonic + self.reap_interval
            if now_monotonic >= self._next_renewal:
                db.execute(
                    "UPDATE messages SET lease_until = ? WHERE owner = ?",
                    (time.time() + self.visibility_timeout, self.connection_id),
                )
                self._next_renewal = now_monotonic + self.visibility_timeout / 3
            db.execute("COMMIT")
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)
            # Acks and nacks have no future to fail: keep them and try again, or
            # their rows would stay leased (and renewed) to this connection forever.
            settles = [op for op in ops if op.kind in ("ack", "nack")]
            self._retry.extend(settles)
            self._retry_delay = min(max(self._retry_delay * 2, RETRY_DELAY[0]), RETRY_DELAY[1])
            self._retry_at = time.monotonic() + self._retry_delay
            log.error(
                "broker transaction on %s failed: %s%s",
                self.path,
                error,
                f"; {len(self._retry)} acks/nacks kept to retry" if self._retry else "",
            )
            for op in ops:
                if op.kind == "publish":
                    for delivery in op.acks:
                        self._restore_inflight(delivery)
                if op.kind == "subscribe" and op.consumer is not None:  # its row is gone
                    with self._lock:
                        self._consumers.pop(op.consumer.subscription.id, None)
                if op.future is not None and not op.future.done():
                    op.future.set_exception(PublishFailed(f"{self.path}: {error}"))
            with self._lock:
                for consumer, delivery in claimed:
                    consumer.inflight.pop(delivery.receipt, None)
                    consumer.dirty = True
            return
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)
            raise
        fcntl.flock(self._write_lock, fcntl.LOCK_UN)
        self._retry_delay = 0.0
        for op, error in results:
            if op.future is not None and not op.future.done():
                if error is None:
                    op.future.set_result(None)
                else:
                    op.future.set_exception(error)
        for address, queue_name in pokes.targets:
            self._sender.poke(address, queue_name)
        for item in claimed:
            self._callbacks.put(item)
        self._maybe_checkpoint(now_monotonic)

    def _reopen(self) -> None:
        """The broker file was deleted or replaced: move this connection to what the path names.

        What it held in the old file stays there; its subscriptions move, under a new
        connection id so nothing meant for the old file can touch a row of the new one.
        """
        assert self._db is not None
        with self._lock:
            consumers = list(self._consumers.values())
            abandoned = sum(len(consumer.inflight) for consumer in consumers)
            for consumer in consumers:
                consumer.inflight.clear()
                consumer.dirty = True
        log.error(
            "broker file %s was %s while this connection used it; reopening %s "
            "(%d unacknowledged messages stay in the old file; new work goes to the new one)",
            self.path,
            "deleted" if file_identity(self.path) is None else "deleted or replaced",
            self.path,
            abandoned,
        )
        self._db.close()
        self._db = None
        os.close(self._write_lock)
        self._liveness.release()
        self.connection_id = self._new_connection_id()
        self._known_queues.clear()
        self._retry.clear()  # settlements of rows in the old file
        self._open_files()
        db = self._db
        assert db is not None
        pokes = _Pokes(db)
        with write_locked(self._write_lock):
            db.execute("BEGIN IMMEDIATE")
            try:
                for consumer in consumers:
                    consumer.consumer_id = f"{self.connection_id}.{consumer.subscription.id}"
                    if consumer.subscription.broadcast:
                        consumer.queue = BROADCAST_PREFIX + consumer.consumer_id
                    self._apply(db, _Op("subscribe", consumer=consumer), pokes)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def _maybe_checkpoint(self, now: float) -> None:
        """Fold the WAL back into the file: constant readers starve automatic checkpoints.

        Usually a PASSIVE checkpoint, which never waits for other connections (so it
        cannot stall this worker); only a WAL grown past ``WAL_RESET_BYTES`` gets a
        RESTART, which waits for readers so the WAL starts over and is truncated to
        ``journal_size_limit``.
        """
        if now < self._next_checkpoint or self._db is None:
            return
        self._next_checkpoint = now + CHECKPOINT_INTERVAL
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            large = wal.stat().st_size > WAL_RESET_BYTES
        except OSError:
            large = False
        try:
            self._db.execute(f"PRAGMA wal_checkpoint({'RESTART' if large else 'PASSIVE'})")
        except sqlite3.Error as error:
            log.debug("checkpoint of %s skipped: %s", self.path, error)

    def _apply(self, db: sqlite3.Connection, op: _Op, pokes: _Pokes) -> BaseException | None:
        """Apply one operation inside the open transaction; its error, if any."""
        kind = op.kind
        if kind == "ack":
            assert op.delivery is not None
            if not self._delete_owned(db, op.delivery):
                log.warning(
                    "ack of %s came too late: it was already returned to its queue",
                    op.delivery.describe(),
                )
            return None
        if kind == "nack":
            assert op.delivery is not None
            self._return_rows(
                db, [op.delivery.receipt], op.reason, pokes, dead_letter=not op.requeue
            )
            return None
        if kind == "publish":
            return self._publish_op(db, op, pokes)
        if kind == "subscribe":
            assert op.consumer is not None
            sub = op.consumer.subscription
            db.execute(
                "INSERT INTO consumers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    op.consumer.consumer_id,
                    sub.destination,
                    int(sub.broadcast),
                    self._wake.address,
                    str(self._liveness.path),
                    os.getpid(),
                    time.time(),
                ),
            )
            if not sub.broadcast:
                db.execute("INSERT OR IGNORE INTO known_queues VALUES (?)", (sub.destination,))
                self._known_queues.add(sub.destination)
            with self._lock:
                self._consumers[sub.id] = op.consumer
            return None
        if kind == "bind":
            assert op.binding is not None
            queue_name, topic, expires = op.binding
            db.execute(
                "INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)",
                (queue_name, topic, time.time() + expires),
            )
            return None
        if kind == "reap":  # the turn reaps; nothing more to do
            return None
        if kind == "unsubscribe":
            assert op.consumer is not None
            self._unregister(db, op.consumer)
            return None
        if kind == "close":
            with self._lock:
                consumers = list(self._consumers.values())
            for consumer in consumers:
                consumer.subscription.active = False
                self._unregister(db, consumer)
            owned = [
                row
                for (row,) in db.execute(
                    "SELECT id FROM messages WHERE owner = ?", (self.connection_id,)
                )
            ]
            self._return_rows(db, owned, "connection closed", pokes)
            return None
        raise AssertionError(f"unknown operation {kind}")

    def _publish_op(self, db: sqlite3.Connection, op: _Op, pokes: _Pokes) -> BaseException | None:
        """Acks and inserts of one publish, all or none (a savepoint in the open transaction)."""
        db.execute("SAVEPOINT publish")
        for delivery in op.acks:
            if not self._delete_owned(db, delivery):
                db.execute("ROLLBACK TO publish")
                db.execute("RELEASE publish")
                for other in op.acks:  # still ours: the caller may settle them
                    if other is not delivery:
                        self._restore_inflight(other)
                return PublishFailed(
                    f"{delivery.describe()} was returned to its queue before this "
                    "publish (lease expired or connection reaped); nothing was published "
                    "and no input acknowledged"
                )
        message: Outgoing | None = None
        try:
            for message in op.messages:
                self._insert(db, message, pokes)
        except (TypeError, ValueError) as error:
            db.execute("ROLLBACK TO publish")
            db.execute("RELEASE publish")
            for delivery in op.acks:
                self._restore_inflight(delivery)
            where = f" to {message.describe()}" if message is not None else ""
            return PublishFailed(f"cannot publish{where}: {error}")
        db.execute("RELEASE publish")
        return None

    def _unregister(self, db: sqlite3.Connection, consumer: _Consumer) -> None:
        db.execute("DELETE FROM consumers WHERE id = ?", (consumer.consumer_id,))
        if consumer.subscription.broadcast:
            db.execute("DELETE FROM messages WHERE queue = ?", (consumer.queue,))
            with self._lock:
                self._consumers.pop(consumer.subscription.id, None)

    def _delete_owned(self, db: sqlite3.Connection, delivery: Delivery) -> bool:
        cursor = db.execute(
            "DELETE FROM messages WHERE id = ? AND owner = ?",
            (delivery.receipt, self.connection_id),
        )
        return cursor.rowcount == 1

    def _insert(self, db: sqlite3.Connection, message: Outgoing, pokes: _Pokes) -> None:
        now = time.time()
        available = now + (message.delay or 0)
        expires = available + message.expiration if message.expiration is not None else None
        headers = json.dumps(dict(message.headers))
        if message.broadcast:
            targets = db.execute(
                "SELECT id, wake FROM consumers WHERE queue = ? AND broadcast = 1",
                (message.destination,),
            ).fetchall()
            for consumer_id, wake in targets:
                private = BROADCAST_PREFIX + consumer_id
                db.execute(
                    "INSERT INTO messages (queue, body, headers, priority, available_at, "
                    "expires_at) VALUES (?, ?, ?, 0, ?, ?)",
                    (private, message.body, headers, available, expires),
                )
                pokes.add(wake, private)
            self._copy_to_bound_queues(db, message, headers, available, expires, pokes)
            return
        db.execute(
            "INSERT INTO messages (queue, body, headers, priority, available_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (message.destination, message.body, headers, message.priority or 0, available, expires),
        )
        if message.destination not in self._known_queues:
            self._check_known(db, message.destination)
        pokes.queue(message.destination)

    def _copy_to_bound_queues(
        self,
        db: sqlite3.Connection,
        message: Outgoing,
        headers: str,
        available: float,
        expires: float | None,
        pokes: _Pokes,
    ) -> None:
        """A broadcast's copies for the queues bound to its topic (see ``bind_queue``).

        A binding is kept while its queue has a consumer or until ``kept_until``;
        past both it is dropped, with what waited in its queue.
        """
        now = time.time()
        for (queue_name,) in db.execute(
            "SELECT queue FROM bindings WHERE kept_until < ? AND queue NOT IN "
            "(SELECT queue FROM consumers WHERE broadcast = 0)",
            (now,),
        ).fetchall():
            db.execute("DELETE FROM bindings WHERE queue = ?", (queue_name,))
            db.execute("DELETE FROM messages WHERE queue = ?", (queue_name,))
        for (queue_name,) in db.execute(
            "SELECT queue FROM bindings WHERE topic = ?", (message.destination,)
        ).fetchall():
            db.execute(
                "INSERT INTO messages (queue, body, headers, priority, available_at, "
                "expires_at) VALUES (?, ?, ?, 0, ?, ?)",
                (queue_name, message.body, headers, available, expires),
            )
            pokes.queue(queue_name)

    def _check_known(self, db: sqlite3.Connection, queue_name: str) -> None:
        """Warn once about a queue no consumer ever read on this file (a mistyped path?)."""
        self._known_queues.add(queue_name)
        if queue_name.startswith("dlq."):
            return
        if db.execute("SELECT 1 FROM known_queues WHERE name = ?", (queue_name,)).fetchone():
            return
        log.warning(
            "no consumer has ever read queue %s on broker file %s; messages wait there "
            "until one does (is this the broker file your services use?)",
            queue_name,
            self.path,
        )

    def _claim(
        self, db: sqlite3.Connection, consumer: _Consumer
    ) -> list[tuple[_Consumer, Delivery]]:
        """Take up to ``room`` ready messages for ``consumer``; drop expired ones."""
        subscription = consumer.subscription
        now = time.time()
        claimed: list[tuple[_Consumer, Delivery]] = []
        with self._lock:
            consumer.dirty = False
            consumer.due = None
        while (room := consumer.room) > 0:
            if subscription.broadcast:
                rows = db.execute(_TAKE_BROADCAST_SQL, (consumer.queue, now)).fetchall()
            else:
                lease = now + self.visibility_timeout
                rows = db.execute(
                    _CLAIM_SQL, (self.connection_id, lease, consumer.queue, now, room)
                ).fetchall()
            rows.sort(key=lambda row: (-row[3], row[0]))
            expired = [(row[0],) for row in rows if row[4] is not None and row[4] <= now]
            if expired:
                db.executemany("DELETE FROM messages WHERE id = ?", expired)
            live = [
                self._delivery(subscription, row) for row in rows if row[4] is None or row[4] > now
            ]
            claimed.extend((consumer, delivery) for delivery in live)
            with self._lock:
                if not subscription.broadcast:
                    consumer.inflight.update((d.receipt, d) for d in live)
                if len(rows) < room:
                    consumer.saturated = False  # the queue has nothing more ready
                    break
                consumer.saturated = True
                if subscription.broadcast:
                    consumer.dirty = True  # a full batch: take the rest next turn
                    break
        if consumer.room > 0:
            (due,) = db.execute(
                "SELECT MIN(available_at) FROM messages WHERE queue = ? AND owner IS NULL "
                "AND available_at > ?",
                (consumer.queue, now),
            ).fetchone()
            with self._lock:
                consumer.due = due
        return claimed

    def _delivery(self, subscription: Subscription, row: tuple) -> Delivery:
        row_id, body, headers, _, _, count = row
        return Delivery(
            subscription=subscription,
            message_id=f"{self.path.name}:{row_id}",
            body=bytes(body),
            headers=json.loads(headers),
            delivery_count=max(1, count),
            redelivered=count > 1,
            ackable=not subscription.broadcast,
            receipt=row_id,
        )

    # -- returning and reaping ----------------------------------------------
    def _return_rows(
        self,
        db: sqlite3.Connection,
        row_ids: list[int],
        reason: str,
        pokes: _Pokes,
        *,
        dead_letter: bool = False,
    ) -> None:
        """Give rows back to their queues, or dead-letter them (limit or ``dead_letter``)."""
        now = time.time()
        for row_id in row_ids:
            row = db.execute(
                "SELECT queue, headers, history, delivery_count FROM messages WHERE id = ?",
                (row_id,),
            ).fetchone()
            if row is None:
                continue
            queue_name, headers_json, history_json, count = row
            history = json.loads(history_json) if history_json else []
            history.append(delivery_entry(queue_name, reason, count))
            if dead_letter or count >= self.delivery_limit:
                why = (
                    reason
                    if dead_letter
                    else delivery_limit_reason(count, self.delivery_limit, reason)
                )
                headers = dead_letter_headers(
                    json.loads(headers_json), reason=why, queue=queue_name, history=history
                )
                target = dlq_name(queue_name)
                db.execute(
                    "UPDATE messages SET queue = ?, headers = ?, history = ?, owner = NULL, "
                    "lease_until = NULL, delivery_count = 0, available_at = ? WHERE id = ?",
                    (target, json.dumps(headers), json.dumps(history), now, row_id),
                )
            else:
                target = queue_name
                db.execute(
                    "UPDATE messages SET history = ?, owner = NULL, lease_until = NULL, "
                    "available_at = ? WHERE id = ?",
                    (json.dumps(history), now, row_id),
                )
            pokes.queue(target)

    def _dead_connections(self) -> list[str]:
        """Connections that hold rows or subscriptions but no longer hold their flock."""
        assert self._db is not None
        prefix = f"{self.connection_id}."
        connections: set[str] = set()
        try:
            for (owner,) in self._db.execute(
                "SELECT DISTINCT owner FROM messages WHERE owner IS NOT NULL"
            ):
                connections.add(owner)
            for (consumer_id,) in self._db.execute("SELECT id FROM consumers"):
                if not consumer_id.startswith(prefix):
                    connections.add(consumer_id.rsplit(".", 1)[0])
        except sqlite3.Error as error:
            log.debug("reaper could not read %s: %s", self.path, error)
            return []
        connections.discard(self.connection_id)
        return [c for c in connections if holder_is_dead(str(self.locks_directory / f"{c}.lock"))]

    def _reap(self, db: sqlite3.Connection, dead: list[str], pokes: _Pokes) -> None:
        for connection in dead:
            owned = [
                row
                for (row,) in db.execute("SELECT id FROM messages WHERE owner = ?", (connection,))
            ]
            if owned:
                log.warning(
                    "connection %s died holding %d messages; returning them", connection, len(owned)
                )
            self._return_rows(db, owned, f"consumer {connection} died", pokes)
            for (consumer_id,) in db.execute(
                "SELECT id FROM consumers WHERE id LIKE ? ESCAPE '\\'",
                (connection.replace("_", "\\_").replace("%", "\\%") + ".%",),
            ).fetchall():
                db.execute("DELETE FROM consumers WHERE id = ?", (consumer_id,))
                db.execute(
                    "DELETE FROM messages WHERE queue = ?", (BROADCAST_PREFIX + consumer_id,)
                )
        now = time.time()
        expired = [
            row
            for (row,) in db.execute(
                "SELECT id FROM messages "
                "WHERE owner IS NOT NULL AND owner != ? AND lease_until < ?",
                (self.connection_id, now),
            )
        ]
        if expired:
            log.warning("%d leases expired (hung consumers?); returning them", len(expired))
            self._return_rows(db, expired, "lease expired", pokes)

    # -- the callback thread ------------------------------------------------
    def _dispatch(self) -> None:
        while (item := self._callbacks.get()) is not None:
            consumer, delivery = item
            if self._state != "open":
                continue
            self.hand_over(consumer.subscription, delivery)

    # -- introspection -------------------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        """Per queue: ready, delayed, in-flight (for `zocalo queues`).

        Dead consumers are reaped first, so what they held counts as ready again;
        a queue with consumers and no messages is listed too.
        """
        if self._state == "open":
            reaped = Confirmation()
            self._submit(_Op("reap", future=reaped))
            reaped.result(30)
        db = sqlite3.connect(self.path, timeout=30)
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
        # Queues with consumers but no messages are listed too.
        stats = {row[0]: QueueStats(*row, consumers=consumers.get(row[0], 0)) for row in rows}
        for name, count in consumers.items():
            stats.setdefault(name, QueueStats(name, consumers=count))
        return [stats[name] for name in sorted(stats)]
