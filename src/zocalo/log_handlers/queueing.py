"""A log handler that hands records to a background thread and never blocks the caller.

:class:`NonBlockingHandler` is a :class:`logging.handlers.QueueHandler` with its own
:class:`logging.handlers.QueueListener`. The queue is bounded: when it is full (the
endpoint behind it is slower than the logging, or black-holes packets) the record is
dropped and counted, and a warning naming the count goes to stderr, at most once per
``warn_interval`` seconds. Logging itself only ever does a ``put_nowait``.

A forked child (the supervisor forks its services) gets a fresh queue, thread and
sockets: the parent's queue lock may have been held by its thread at the fork, and
two processes writing one TCP stream would interleave their frames.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
import weakref
from typing import IO

_exception_formatter = logging.Formatter()


class _Listener(logging.handlers.QueueListener):
    def __init__(self, owner: NonBlockingHandler, *handlers: logging.Handler) -> None:
        super().__init__(owner.queue, *handlers, respect_handler_level=True)
        self.owner = owner
        self.aborting = False

    def handle(self, record: logging.LogRecord) -> None:
        if self.aborting:
            self.owner._count_drop()
            return
        super().handle(record)

    def start(self) -> None:
        # QueueListener.start with a named daemon thread (_monitor: its documented-in-source loop)
        monitor = self._monitor  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=monitor, name="zocalo-log-queue", daemon=True)
        self._thread.start()


class NonBlockingHandler(logging.handlers.QueueHandler):
    """Pass records to ``targets`` on a background thread, through a bounded queue.

    ``dropped`` counts the records lost because the queue was full. :meth:`close` waits
    up to ``flush_timeout`` seconds for the queue to drain, then gives up on what is left
    (calling ``abort()`` on targets that have one), stops the thread and closes the targets.

    Filters that read context variables (:class:`zocalo.logs.RecipeContextFilter`) must be
    on this handler: the targets run on another thread, outside the caller's context.
    """

    def __init__(
        self,
        *targets: logging.Handler,
        maxsize: int = 10_000,
        warn_interval: float = 60.0,
        flush_timeout: float = 5.0,
        stream: IO[str] | None = None,
    ) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be positive: the queue has to be bounded")
        self.queue: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize)
        super().__init__(self.queue)
        self.targets = targets
        self.maxsize = maxsize
        self.warn_interval = warn_interval
        self.flush_timeout = flush_timeout
        self.stream = stream
        self.dropped = 0
        self._reported = 0
        self._last_warning: float | None = None
        self._drop_lock = threading.Lock()
        self._closed = False
        self._listener = _Listener(self, *targets)
        self._listener.start()
        _live.add(self)

    def _after_fork_in_child(self) -> None:
        self.queue = queue.Queue(self.maxsize)
        self._drop_lock = threading.Lock()
        for target in self.targets:
            sock = getattr(target, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
                target.sock = None  # type: ignore[attr-defined]  # reopened on next send
        self._listener = _Listener(self, *self.targets)
        if not self._closed:
            self._listener.start()

    # -- the caller's side -------------------------------------------------------------
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy with the message merged and the traceback as text (``exc_text``).

        Unlike the standard QueueHandler, the traceback is not folded into the message,
        so GELF can send it as ``full_message`` and formatters still print it.
        """
        message = record.getMessage()
        record = copy.copy(record)
        record.message = message
        record.msg = message
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _exception_formatter.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._closed:
            self._count_drop()
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._count_drop()

    def _count_drop(self) -> None:
        with self._drop_lock:
            self.dropped += 1
            now = time.monotonic()
            if self._last_warning is not None and now - self._last_warning < self.warn_interval:
                return
            self._last_warning = now
            self._warn()

    def _warn(self) -> None:
        self._reported = self.dropped
        names = ", ".join(type(target).__name__ for target in self.targets)
        stream = self.stream or sys.stderr
        try:
            stream.write(
                f"zocalo logging: {self.dropped} log record(s) dropped so far: the queue to "
                f"{names} is full (is the log endpoint slow or unreachable?)\n"
            )
            stream.flush()
        except (OSError, ValueError):
            pass

    # -- shutting down --------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued record is handled."""
        deadline = time.monotonic() + timeout
        condition = self.queue.all_tasks_done
        with condition:
            while self.queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                condition.wait(remaining)
        return True

    def close(self) -> None:
        with self._drop_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self.drain(self.flush_timeout):
                # The endpoint does not keep up: drop the rest, break off the stuck send.
                self._listener.aborting = True
                for target in self.targets:
                    abort = getattr(target, "abort", None)
                    if abort is not None:
                        abort()
            thread = self._listener._thread
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=self.flush_timeout)  # the listener's sentinel
            if thread is not None:
                thread.join(self.flush_timeout)
            if thread is None or not thread.is_alive():
                for target in self.targets:
                    target.close()
            if self.dropped > self._reported:
                with self._drop_lock:
                    self._warn()
        finally:
            super().close()


_live: weakref.WeakSet[NonBlockingHandler] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for handler in list(_live):
        handler._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_after_fork)
