"""The broker connection: one pika ``SelectConnection``, its I/O thread, and reconnection.

pika's ``SelectConnection`` is not thread-safe: everything touching it, its
channels included, must run on the thread that runs its I/O loop. This module
owns that thread and the two ways other threads hand work to it —
:meth:`Connection.call` (run and wait for the answer) and
:meth:`Connection.soon` (run without waiting, batched so a burst of publishes
and acks wakes the loop once) — so no other module touches a thread or the
loop.

It also turns pika's opaque failures (TLS, credentials, virtual host) into
one sentence, and gives :mod:`zocalo.transport.reconnect` (which opens the
first cluster node that answers, and after an unexpected loss reconnects with
growing delays) pika's part: opening one node, and shutting a connection. What
has to be rebuilt on a new connection (channels, subscriptions) and what a
lost one leaves behind (unconfirmed publishes, unsettled deliveries) belongs
to its owner, told through three hooks.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.channel import Channel

from zocalo.errors import ConnectionFailed, TransportError
from zocalo.transport.base import Confirmation
from zocalo.transport.reconnect import Reconnecting

log = logging.getLogger(__name__)


class Connection(Reconnecting[pika.ConnectionParameters]):
    """A connection to the first node of ``nodes`` that answers, kept open until closed.

    The owner's hooks: ``on_open()`` runs on the opening thread once a
    connection is open (and may :meth:`call`), ``on_lost(reason)`` on the I/O
    thread when one closes, and ``on_reconnected()`` on the reconnecting thread
    after a reconnect, returning how many subscriptions it restored. Only
    :class:`ConnectionFailed`, :class:`TransportError` and ``TimeoutError`` from
    the hooks count as a failed attempt.
    """

    thread_name = "rabbitmq-reconnect"
    logger = log
    attempt_failures = (TransportError, TimeoutError)

    def __init__(
        self,
        nodes: list[pika.ConnectionParameters],
        safe_url: str,
        *,
        on_open: Callable[[], None],
        on_lost: Callable[[BaseException], None],
        on_reconnected: Callable[[], int],
    ) -> None:
        # close() aborts an attempt under way (see _shut): its thread ends soon.
        super().__init__(nodes, safe_url, on_reconnected=on_reconnected, close_wait=15)
        #: The node connected to (or being tried).
        self.parameters = nodes[0]
        self._on_open = on_open
        self._on_lost = on_lost
        self._pika: pika.SelectConnection | None = None
        self._thread: threading.Thread | None = None
        #: Held while a connection and its I/O thread are made and started: ``close``
        #: (from another thread, while a reconnect is under way) sees both or neither,
        #: never a thread not started yet (which it could not join).
        self._starting = threading.Lock()
        self._soon_queue: collections.deque[Callable[[], None]] = collections.deque()
        self._soon_scheduled = False
        #: The answers :meth:`call` waits for: failed when the connection closes.
        self._awaited: set[Confirmation] = set()
        self._awaited_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """Open, as far as both we and pika know (so a channel can be opened on it)."""
        connection = self._pika
        return self.is_open and connection is not None and connection.is_open

    def on_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # -- opening --------------------------------------------------------------
    def _open_node(self, node: pika.ConnectionParameters) -> None:
        """Connect to ``node``, then let the owner open its channels."""
        self.parameters = node
        opened: Confirmation = Confirmation()

        def on_open(connection: pika.SelectConnection) -> None:
            opened.set_result(None)

        def on_open_error(connection: pika.SelectConnection, error: BaseException) -> None:
            if not opened.done():
                opened.set_exception(
                    error if isinstance(error, BaseException) else RuntimeError(str(error))
                )
            connection.ioloop.stop()  # its socket is closed: its I/O thread ends

        with self._starting:
            self._pika = pika.SelectConnection(
                self.parameters,
                on_open_callback=on_open,
                on_open_error_callback=on_open_error,
                on_close_callback=self._on_closed,
            )
            self._thread = threading.Thread(
                target=self._run_ioloop, args=(self._pika,), name="rabbitmq-io", daemon=True
            )
            self._thread.start()
        try:
            opened.result(self.parameters.socket_timeout + 5)
        except Exception as error:
            # Unanswered: the handshake under way is cut (stopping the loop alone left
            # its socket open, a half-open connection at the broker per attempt).
            self._drop("no answer to the handshake")
            raise ConnectionFailed(self.explain(error)) from None
        self.is_open = True
        # A batch of operations scheduled on a lost connection's loop never ran.
        self._soon_scheduled = False
        if self._soon_queue:
            self.soon(lambda: None)
        self._on_open()

    def _run_ioloop(self, connection: pika.SelectConnection) -> None:
        try:
            connection.ioloop.start()
        except AssertionError:
            if not self.closing:
                raise
            # close() aborted a connection mid-handshake (a reconnect attempt): pika 1.4
            # then reports the abort with the exception class instead of an instance and
            # fails an assertion on its I/O thread, after the socket was closed.
            log.debug("pika's I/O loop ended on an aborted connection attempt", exc_info=True)

    def explain(self, error: BaseException) -> str:
        """Why connecting failed, in one sentence that says what to check."""
        where = f"RabbitMQ at {self.safe_url}"
        if len(self.nodes) > 1:
            where += f" (node {self.parameters.host}:{self.parameters.port})"
        error = _cause(error)
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"TLS: {where} presented a certificate this client does not trust "
                f"({text}); check cafile"
            )
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake with {where} failed ({text})"
        if isinstance(
            error, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError
        ):
            return f"{where} refused the credentials ({text})"
        if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
            return (
                f"{where}: access to virtual host {self.parameters.virtual_host!r} denied "
                f"or it does not exist ({text})"
            )
        return f"cannot connect to {where} ({text})"

    # -- losing --------------------------------------------------------------
    def _on_closed(self, connection: Any, reason: BaseException) -> None:
        was_open = self.is_open
        self.is_open = False
        with self._awaited_lock:
            awaited, self._awaited = self._awaited, set()
        for done in awaited:  # (what sets them runs on this thread too)
            if not done.done():
                done.set_exception(
                    ConnectionFailed(f"{self.safe_url}: the connection was lost ({reason})")
                )
        self._on_lost(reason)
        connection.ioloop.stop()
        if was_open and not self.closing:
            log.warning("connection to %s lost: %s; reconnecting", self.safe_url, reason)
            self._start_reconnecting()

    # -- closing --------------------------------------------------------------
    def _abandon(self) -> None:
        """After a failed attempt: drop the connection it opened, if it is still up.

        Left up, the connection lived on at the broker until the heartbeat timeout, its
        consumers holding deliveries (and taking new ones), its exclusive queues locked
        against the next attempt.
        """
        self.is_open = False  # this attempt's loss: nothing to reconnect after
        self._drop("dropped after a failed attempt")

    def _drop(self, why: str) -> None:
        """Cut the connection, open or still opening, and wait for its I/O thread to end.

        No goodbye (the broker may not be listening): the socket is cut, as pika does
        after missed heartbeats. pika then closes an open connection's channels and calls
        :meth:`_on_closed`, which tells the owner (what awaited the broker's answer on
        it fails; what it delivered is forgotten, the broker returns it); one still
        opening reports an open error. Either stops the I/O loop.
        """
        with self._starting:
            connection, thread = self._pika, self._thread
        if connection is None or thread is None or not thread.is_alive():
            return  # never opened, or already closed (pika stopped its loop)

        def drop() -> None:
            if not connection.is_closed:
                connection._terminate_stream(  # pika's own abort (see its heartbeat.py)
                    ConnectionFailed(why)
                )

        with contextlib.suppress(Exception):
            connection.ioloop.add_callback_threadsafe(drop)
        if thread is not threading.current_thread():
            thread.join(10)

    def _shut(self) -> None:
        """Close the connection (open, or still opening: a reconnect attempt's is
        aborted) and wait for its I/O thread."""
        self.is_open = False
        with self._starting:
            connection, thread = self._pika, self._thread
        if connection is None:
            return
        with contextlib.suppress(Exception):
            connection.ioloop.add_callback_threadsafe(
                lambda: (
                    None if connection.is_closing or connection.is_closed else connection.close()
                )
            )
        if thread is not None and thread is not threading.current_thread():
            thread.join(15)

    # -- running things on the I/O thread -------------------------------------
    def call(self, operation: Callable[[Confirmation], None], timeout: float = 30) -> Any:
        """Run ``operation(future)`` on the I/O thread and wait for its result (a
        ConnectionFailed if the connection closes first)."""
        done: Confirmation = Confirmation()
        with self._awaited_lock:
            self._awaited.add(done)  # before the check: a close after it fails ``done``
        if not self.is_open or self._pika is None:
            self._forget(done)
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")

        def run() -> None:
            try:
                operation(done)
            except Exception as error:
                if not done.done():
                    done.set_exception(error)

        try:
            self._pika.ioloop.add_callback_threadsafe(run)
            return done.result(timeout)
        except TimeoutError:  # builtin on 3.11: not one of ours, so callers would miss it
            raise TransportError(
                f"{self.safe_url}: no answer from the broker within {timeout:g} s"
            ) from None
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed) as error:
            raise ConnectionFailed(f"{self.safe_url}: the connection was lost ({error})") from None
        finally:
            self._forget(done)

    def _forget(self, done: Confirmation) -> None:
        with self._awaited_lock:
            self._awaited.discard(done)

    def soon(self, operation: Callable[[], None]) -> None:
        """Run ``operation`` on the I/O thread without waiting.

        Operations queue up and the I/O thread is woken once per batch, not once
        per publish or ack (each wake-up is a pipe write and a loop turn).
        """
        connection = self._pika
        if not self.is_open or connection is None:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")
        self._soon_queue.append(operation)
        if not self._soon_scheduled:
            self._soon_scheduled = True
            connection.ioloop.add_callback_threadsafe(self._run_soon)

    def _run_soon(self) -> None:
        # Cleared before draining: an operation queued after this sees it clear and
        # schedules another run; one queued before it is drained below.
        self._soon_scheduled = False
        while self._soon_queue:
            operation = self._soon_queue.popleft()
            try:
                operation()
            except Exception:
                log.exception("operation on the RabbitMQ I/O thread failed")

    def later(self, delay: float, operation: Callable[[], None]) -> None:
        """On the I/O thread: run ``operation`` there after ``delay`` seconds (never if
        this connection is lost first: its loop stops)."""
        assert self._pika is not None
        self._pika.ioloop.call_later(delay, operation)

    def open_channel(self, done: Confirmation, on_close: Callable | None = None) -> None:
        """On the I/O thread: open a channel; ``done`` gets it once open."""
        assert self._pika is not None

        def opened(channel: Channel) -> None:
            channel.add_on_close_callback(on_close or _on_channel_closed)
            done.set_result(channel)

        self._pika.channel(on_open_callback=opened)


def _on_channel_closed(channel: Channel, reason: BaseException) -> None:
    log.debug("channel %s closed: %s", channel.channel_number, reason)


def _cause(error: BaseException) -> BaseException:
    """The underlying error: pika wraps TLS and socket failures in errors with empty text."""
    while True:
        if getattr(error, "exceptions", None):
            error = error.exceptions[-1]  # type: ignore[attr-defined]
        elif isinstance(getattr(error, "exception", None), BaseException):
            error = error.exception  # type: ignore[attr-defined]
        elif error.args and isinstance(error.args[-1], BaseException):
            error = error.args[-1]
        else:
            return error
