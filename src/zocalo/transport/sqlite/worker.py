"""The worker of one connection: every write to the broker file, in group commits.

One thread owns the connection's :class:`Store` and does everything in
batches: every operation queued since its last batch, and the claiming of new
deliveries for every subscription with room in its prefetch window, go into
ONE ``BEGIN IMMEDIATE`` transaction (group commit). Callbacks run on a second
thread so a slow callback never holds the broker file.

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
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import select
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from zocalo.errors import ConnectionFailed, PublishFailed
from zocalo.transport.messages import Confirmation, Delivery, Subscription
from zocalo.transport.sqlite.consumers import Claimed, Consumers
from zocalo.transport.sqlite.files import (
    Permissions,
    file_identity,
    locks_directory,
    write_lock_path,
    write_locked,
)
from zocalo.transport.sqlite.operations import Close, Operation, Reap, Settle
from zocalo.transport.sqlite.schema import open_database
from zocalo.transport.sqlite.signals import (
    LivenessLock,
    WakeSender,
    WakeSocket,
    WakeUps,
    WorkerWake,
    holder_is_dead,
)
from zocalo.transport.sqlite.store import Store

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 10.0
#: Bounds of the wait before acks and nacks of a failed transaction are tried again.
RETRY_DELAY = (0.05, 2.0)
WAL_RESET_BYTES = 16 * 1024 * 1024


def new_connection_id() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


class Worker:
    """One connection's files, wake-up sockets and threads, from connect to close.

    ``state`` is "open" until :meth:`close` or :meth:`abort` ("aborting", then
    "closed"), or "failed" once the worker thread died of an unexpected error.
    """

    def __init__(
        self,
        url: str,
        path: Path,
        *,
        permissions: Permissions,
        synchronous: str,
        visibility_timeout: float,
        reap_interval: float,
        delivery_limit: int,
        consumers: Consumers,
        hand_over: Callable[[Subscription, Delivery], None],
        report_failure: Callable[[str], None],
    ) -> None:
        self.url = url
        self.path = path
        self.permissions = permissions
        self.synchronous = synchronous
        self.visibility_timeout = visibility_timeout
        self.reap_interval = reap_interval
        self.delivery_limit = delivery_limit
        self.consumers = consumers
        self._hand_over = hand_over
        self._report_failure = report_failure
        self.connection_id = new_connection_id()
        self.wake_socket = WakeSocket(path, self.connection_id, permissions)
        try:
            self._open_files()
        except BaseException:
            self.wake_socket.close()
            raise
        self.wake_sender = WakeSender()
        self.worker_wake = WorkerWake()
        self._operations: queue.SimpleQueue[Operation] = queue.SimpleQueue()
        self._callbacks: queue.SimpleQueue[Claimed | None] = queue.SimpleQueue()
        #: Acks and nacks of failed transactions, tried again at ``_retry_at``.
        self._retry: list[Operation] = []
        self._retry_at = 0.0
        self._retry_delay = 0.0
        now = time.monotonic()
        self._next_reap = now
        self._next_renewal = now + visibility_timeout / 3
        self._next_checkpoint = now + CHECKPOINT_INTERVAL
        self.state = "open"
        self._closing = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="sqlite-broker", daemon=True)
        self.callback_thread = threading.Thread(
            target=self._run_callbacks, name="sqlite-callbacks", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        self.callback_thread.start()

    # -- the files ----------------------------------------------------------
    def _open_files(self) -> None:
        """The write lock, the broker file and this connection's liveness lock."""
        try:
            self.permissions.make_directories(self.path.parent)
            self._write_lock = self.permissions.open_file(write_lock_path(self.path))
        except OSError as error:
            raise ConnectionFailed(f"cannot create broker file {self.path}: {error}") from None
        db: sqlite3.Connection | None = None
        try:
            db = open_database(
                self.path, self._write_lock, self.synchronous, permissions=self.permissions
            )
            self._identity = file_identity(self.path)
            self.liveness = LivenessLock(
                locks_directory(self.path), self.connection_id, self.permissions
            )
        except BaseException as error:
            if db is not None:
                db.close()
            os.close(self._write_lock)
            if isinstance(error, OSError):  # the liveness lock's: a directory it may not write
                raise ConnectionFailed(f"cannot open broker file {self.path}: {error}") from None
            raise
        self._store: Store | None = Store(
            db,
            self.path,
            self.connection_id,
            wake_address=self.wake_socket.address,
            lock_path=self.liveness.path,
            visibility_timeout=self.visibility_timeout,
            delivery_limit=self.delivery_limit,
        )

    def _close_files(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            os.close(self._write_lock)

    def _reopen(self) -> None:
        """The broker file was deleted or replaced: move this connection to what the path names.

        What it held in the old file stays there; its subscriptions move, under a new
        connection id so nothing meant for the old file can touch a row of the new one.
        """
        abandoned = self.consumers.forget_all_inflight()
        log.error(
            "broker file %s was %s while this connection used it; reopening %s "
            "(%d unacknowledged messages stay in the old file; new work goes to the new one)",
            self.path,
            "deleted" if file_identity(self.path) is None else "deleted or replaced",
            self.path,
            abandoned,
        )
        self._close_files()
        self.liveness.release()
        self.connection_id = new_connection_id()
        self._retry.clear()  # settlements of rows in the old file
        self._open_files()
        store = self._store
        assert store is not None
        with write_locked(self._write_lock):
            store.begin()
            try:
                for consumer in self.consumers.all():
                    consumer.register(store)
                store.commit()
            except BaseException:
                store.rollback()
                raise

    def _maybe_checkpoint(self, now: float) -> None:
        """Fold the WAL back into the file: constant readers starve automatic checkpoints.

        Usually a PASSIVE checkpoint, which never waits for other connections (so it
        cannot stall this worker); only a WAL grown past ``WAL_RESET_BYTES`` gets a
        RESTART, which waits for readers so the WAL starts over and is truncated to
        ``journal_size_limit``.
        """
        if now < self._next_checkpoint or self._store is None:
            return
        self._next_checkpoint = now + CHECKPOINT_INTERVAL
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            large = wal.stat().st_size > WAL_RESET_BYTES
        except OSError:
            large = False
        try:
            self._store.checkpoint(restart=large)
        except sqlite3.Error as error:
            log.debug("checkpoint of %s skipped: %s", self.path, error)

    # -- the caller's side --------------------------------------------------
    def submit(self, operation: Operation) -> None:
        """Queue ``operation`` for the next batch."""
        if self.state == "failed":  # no worker will ever take it: fail it now
            self._fail([operation], "broker worker failed")
            return
        self._operations.put(operation)
        self.worker_wake.wake()

    def close(self) -> None:
        """Unregister, return every unacknowledged delivery, and close the files.

        Called on the worker thread (a confirmation's callback), it returns at once and
        the closing goes on, on a thread of its own: the worker would wait for itself.
        """
        if threading.current_thread() is self.thread:
            threading.Thread(target=self.close, name="sqlite-close", daemon=True).start()
            return
        with self._closing:  # one close at a time: a second waits for the first
            if self.state == "failed":  # the worker died: clean up from here
                self._finish()
                self.state = "closed"
                return
            if self.state != "open":
                self.state = "closed"
                return
            done = Confirmation()
            self.submit(Close(done))
            with contextlib.suppress(Exception):
                done.result(30)
            self._finish()

    def abort(self) -> None:
        """Vanish as a killed process would: no cleanup; others reap what we held."""
        if self.state == "failed":  # the worker died: still let go of the files
            self.state = "aborting"
            self._finish()
            return
        if self.state != "open":
            return
        self.state = "aborting"
        self.worker_wake.wake()
        self._finish()

    def _finish(self) -> None:
        failed = self.state == "failed"
        self.state = "closed"
        self.worker_wake.wake()
        self._callbacks.put(None)
        for thread in (self.thread, self.callback_thread):
            if thread is not threading.current_thread():
                thread.join(10)
        if failed and self._store is not None:
            self._return_everything()
        self.liveness.release()
        for closable in (self.wake_socket, self.wake_sender, self.worker_wake):
            closable.close()
        self._close_files()

    # -- the worker thread --------------------------------------------------
    def _work(self) -> None:
        operations: list[Operation] = []
        try:
            while self.state == "open":
                self._wait(self._timeout())
                operations = self._drain_operations()
                if self.state != "open":
                    self._fail(operations, "transport aborted")
                    return
                closing = any(isinstance(op, Close) for op in operations)
                if self._retry and (closing or time.monotonic() >= self._retry_at):
                    operations, self._retry = self._retry + operations, []
                self._commit_batch(operations)
                if closing:
                    return
        except Exception as error:
            self.state = "failed"
            # The batch in hand too: nothing else would ever complete its confirmations.
            self._fail(operations + self._drain_operations(), "broker worker failed")
            # One line, and the owner is told: a runner waiting for deliveries would
            # otherwise sit idle forever on a connection that no longer works.
            self._report_failure(
                f"broker file {self.path}: the connection failed and is closed "
                f"({type(error).__name__}: {error})"
            )

    def _return_everything(self) -> None:
        """After the worker died: unregister and return held rows now, not at lease end."""
        store = self._store
        assert store is not None
        wake_ups = WakeUps(store.wake_addresses)
        try:
            with write_locked(self._write_lock):
                store.begin()
                try:
                    Close().apply(store, self.consumers, wake_ups)
                    store.commit()
                except BaseException:
                    store.rollback()
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
        wake_ups.send(self.wake_sender)

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_reap, self._next_renewal, self._next_checkpoint]
        if self._retry:
            deadlines.append(self._retry_at)
        claim_at = self.consumers.next_claim_at(now)
        if claim_at is not None:
            deadlines.append(claim_at)
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> None:
        watched: list[WakeSocket | WorkerWake] = [self.wake_socket, self.worker_wake]
        readable, _, _ = select.select(watched, [], [], timeout)
        if self.worker_wake in readable:
            self.worker_wake.clear()
        if self.wake_socket in readable:
            woken, maybe_lost = self.wake_socket.drain()
            self.consumers.woken(woken, all_queues=maybe_lost)

    def _drain_operations(self) -> list[Operation]:
        operations: list[Operation] = []
        with contextlib.suppress(queue.Empty):
            while True:
                operations.append(self._operations.get_nowait())
        return operations

    def _fail(self, operations: list[Operation], why: str) -> None:
        for op in operations:
            if op.future is not None and not op.future.done():
                op.future.set_exception(ConnectionFailed(f"{self.url}: {why}"))

    def _commit_batch(self, operations: list[Operation]) -> None:
        """One transaction: apply queued operations, claim deliveries, housekeeping."""
        store = self._store
        assert store is not None
        now_monotonic = time.monotonic()
        reap = now_monotonic >= self._next_reap or any(isinstance(op, Reap) for op in operations)
        if reap and self._identity != file_identity(self.path):
            self._reopen()
            store = self._store
            assert store is not None
        dead = self._dead_connections() if reap else []
        # The reaper's batch also looks at every queue with room: the fallback for a
        # wake-up lost on its way (a full socket, a publisher killed between its
        # commit and its wake-ups).
        claimers = self.consumers.to_claim_for(every_queue=reap)
        if not operations and not claimers and not reap and now_monotonic < self._next_renewal:
            self._maybe_checkpoint(now_monotonic)
            return
        consumers = self.consumers
        wake_ups = WakeUps(store.wake_addresses)
        results: list[tuple[Operation, BaseException | None]] = []
        claimed: list[Claimed] = []
        # Writers queue on a flock rather than on SQLite's busy handler, which sleeps
        # 1, 2, 5, 10 ... ms between retries: under contention that showed as p99 spikes.
        # The kernel hands the lock over at once and drops it if a holder dies.
        fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            store.begin()
            for op in operations:
                results.append((op, op.apply(store, consumers, wake_ups)))
            for consumer in claimers:
                claimed.extend(consumers.claim(store, consumer))
            if reap:
                self._reap(store, dead, wake_ups)
                self._next_reap = now_monotonic + self.reap_interval
            if now_monotonic >= self._next_renewal:
                store.renew_leases()
                self._next_renewal = now_monotonic + self.visibility_timeout / 3
            store.commit()
        except sqlite3.Error as error:
            store.rollback()
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)
            self._rolled_back(operations, claimed, error)
            return
        except BaseException:
            store.rollback()
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)
            raise
        fcntl.flock(self._write_lock, fcntl.LOCK_UN)
        self._retry_delay = 0.0
        for op, failure in results:
            if op.future is not None and not op.future.done():
                if failure is None:
                    op.future.set_result(None)
                else:
                    op.future.set_exception(failure)
        wake_ups.send(self.wake_sender)
        for item in claimed:
            self._callbacks.put(item)
        self._maybe_checkpoint(now_monotonic)

    def _rolled_back(
        self, operations: list[Operation], claimed: list[Claimed], error: sqlite3.Error
    ) -> None:
        """A batch's transaction failed: fail what waits for it, keep acks and nacks."""
        # Acks and nacks have no future to fail: keep them and try again, or
        # their rows would stay leased (and renewed) to this connection forever.
        self._retry.extend(op for op in operations if isinstance(op, Settle))
        self._retry_delay = min(max(self._retry_delay * 2, RETRY_DELAY[0]), RETRY_DELAY[1])
        self._retry_at = time.monotonic() + self._retry_delay
        log.error(
            "broker transaction on %s failed: %s%s",
            self.path,
            error,
            f"; {len(self._retry)} acks/nacks kept to retry" if self._retry else "",
        )
        for op in operations:
            op.rolled_back(self.consumers)
            if op.future is not None and not op.future.done():
                op.future.set_exception(PublishFailed(f"{self.path}: {error}"))
        self.consumers.unclaim(claimed)

    # -- reaping ------------------------------------------------------------
    def _dead_connections(self) -> list[str]:
        """Connections that hold rows or subscriptions but no longer hold their flock."""
        assert self._store is not None
        try:
            connections = self._store.other_connections()
        except sqlite3.Error as error:
            log.debug("reaper could not read %s: %s", self.path, error)
            return []
        directory = locks_directory(self.path)
        return [c for c in connections if holder_is_dead(str(directory / f"{c}.lock"))]

    def _reap(self, store: Store, dead: list[str], wake_ups: WakeUps) -> None:
        """Return what dead connections held, drop their consumers and reply queues; then
        expired leases."""
        for connection in dead:
            owned = store.rows_owned_by(connection)
            if owned:
                log.warning(
                    "connection %s died holding %d messages; returning them", connection, len(owned)
                )
            for queue_name in store.return_rows(
                owned, f"consumer {connection} died", holder=connection
            ):
                wake_ups.consumers_of(queue_name)
            for queue_name in store.remove_consumers_of(connection):
                wake_ups.consumers_of(queue_name)  # its standbys: one of them takes over
            store.drop_reply_queues_of(connection)
        expired = store.expired_leases()
        if expired:
            log.warning("%d leases expired (hung consumers?); returning them", len(expired))
            for queue_name in store.return_rows(expired, "lease expired", holder=None):
                wake_ups.consumers_of(queue_name)

    # -- the callback thread ------------------------------------------------
    def _run_callbacks(self) -> None:
        while (item := self._callbacks.get()) is not None:
            consumer, delivery = item
            if self.state != "open":
                continue
            self._hand_over(consumer.subscription, delivery)
