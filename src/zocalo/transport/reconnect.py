"""Opening a broker connection on the first node that answers, and reopening it after a loss.

The RabbitMQ connection and the STOMP one make the same decisions here, once:

- :meth:`Reconnecting.connect` tries the cluster's nodes in order and opens the
  first that answers, or raises one :class:`ConnectionFailed` naming why each did not;
- after an unexpected loss (the subclass sees it, and calls
  :meth:`Reconnecting._start_reconnecting`), a thread of its own tries again:
  at once, then after 0.5 s, 1 s, 2 s ... (doubling, at most 30 s), one warning per
  failed attempt saying when the next comes, until an attempt succeeds (one warning,
  with how many subscriptions the owner's ``on_reconnected()`` restored) or
  :meth:`Reconnecting.close` comes;
- one thread reconnects at a time: a connection an attempt opened, lost before the
  attempt has restored everything, fails that attempt, and its thread goes on; one
  lost before :meth:`Reconnecting.connect` returns fails it, and nothing reconnects;
- a close is never undone: an attempt that was under way when it came shuts what it
  opened, and ``close()`` waits for the reconnecting thread to end.

What differs by broker are hooks: how to open one node (:meth:`_open_node`), how to
shut the connection when closing (:meth:`_shut`), how to drop what a failed attempt
left (:meth:`_abandon`, no goodbye: the broker may not be listening), and which
exceptions count as a failed attempt (:attr:`attempt_failures`; anything else is a
bug and ends the thread with its traceback).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

from zocalo.errors import ConnectionFailed, TransportError

RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 30.0

#: How a subclass describes one node of the cluster (pika's parameters, host and port...).
Node = TypeVar("Node")


class Reconnecting(ABC, Generic[Node]):
    """A connection to the first of ``nodes`` that answers, reopened after a loss until closed.

    ``on_reconnected()`` runs on the reconnecting thread once a new connection is
    open, restores what the lost one had and returns how many subscriptions it
    restored; an :attr:`attempt_failures` exception from it fails the attempt
    (the next one opens a new connection). ``close_wait``: how long :meth:`close`
    waits for a reconnect attempt under way to end.
    """

    #: The name of the reconnecting thread.
    thread_name: ClassVar[str]
    #: Where the attempts are logged (the subclass's module: operators filter by it).
    logger: ClassVar[logging.Logger]
    #: What, raised by an attempt (opening a node, or ``on_reconnected()``), fails it.
    attempt_failures: ClassVar[tuple[type[BaseException], ...]] = (TransportError,)

    def __init__(
        self,
        nodes: Sequence[Node],
        safe_url: str,
        *,
        on_reconnected: Callable[[], int],
        close_wait: float,
    ) -> None:
        self.nodes = nodes
        self.safe_url = safe_url
        self._on_reconnected = on_reconnected
        self._close_wait = close_wait
        self.is_open = False
        self.closing = False
        #: True from a lost connection until its subscriptions are restored.
        self.restoring = False
        self._closed = threading.Event()
        self._reconnector: threading.Thread | None = None
        #: Orders a loss against the end of the reconnect under way (see ``_restored``).
        self._restoring_lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Open, and after a reconnect with every subscription consuming again."""
        return self.is_open and not self.restoring

    def require_open(self) -> None:
        if not self.is_open:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")

    # -- the broker's part ----------------------------------------------------------
    @abstractmethod
    def _open_node(self, node: Node) -> None:
        """Open a connection to ``node`` (and set ``is_open``), or raise ConnectionFailed."""

    @abstractmethod
    def _shut(self) -> None:
        """Close the connection, open or half-open (``close()`` came)."""

    @abstractmethod
    def _abandon(self) -> None:
        """Drop what a failed attempt left open, without a goodbye."""

    # -- opening ----------------------------------------------------------------------
    def connect(self) -> None:
        """Open a connection, unless one is open; raise ConnectionFailed if no node answers.

        It succeeds, or leaves nothing behind: a connection lost before it returns (while
        the owner's ``on_open`` opened its channels, say) fails it, and starts no
        reconnect (one would have run beside the caller's next ``connect()``).
        """
        if self.is_open:
            return
        self.closing = False
        self._closed.clear()  # else a later reconnect would give up after one attempt
        self.restoring = True  # until it returns: a loss fails it (see _start_reconnecting)
        try:
            self._open_any_node()
            if not self._restored():
                raise ConnectionFailed(f"{self.safe_url}: lost while connecting")
        except BaseException:
            self._abandon()
            raise

    def _open_any_node(self) -> None:
        """Connect to the first cluster node that answers, or raise ConnectionFailed."""
        failures: list[str] = []
        for node in self.nodes:
            if self.closing:
                raise ConnectionFailed(f"{self.safe_url}: closed while connecting")
            try:
                self._open_node(node)
                return
            except ConnectionFailed as error:
                failures.append(str(error))
        raise ConnectionFailed("; ".join(failures))

    # -- reconnecting -----------------------------------------------------------------
    def _start_reconnecting(self) -> None:
        """(The open connection was lost, not closed) reconnect on a thread of its own.

        The subclass has set ``is_open`` false. A connection that a reconnect attempt
        (or ``connect()``) opened, lost before the attempt has ended, is that attempt's
        to deal with: it fails, and its thread tries again, or ``connect()`` raises (a
        second thread would race it, each dropping what the other opened).
        """
        with self._restoring_lock:
            if self.restoring:
                return
            self.restoring = True
        self._reconnector = threading.Thread(
            target=self._reconnect, name=self.thread_name, daemon=True
        )
        self._reconnector.start()

    def _restored(self) -> bool:
        """The attempt (or ``connect()``) has restored everything: end it, unless its
        connection was lost."""
        with self._restoring_lock:
            self.restoring = not self.is_open
            return not self.restoring

    def _reconnect(self) -> None:
        """After an unexpected loss: reconnect with growing delays, then resubscribe."""
        delay, attempt = RECONNECT_FIRST_DELAY, 0
        while not self.closing:
            attempt += 1
            try:
                self._open_any_node()
                if self.closing:  # close() came while this attempt was under way
                    self._shut()
                    return
                restored = self._on_reconnected()
                if not self._restored():
                    raise ConnectionFailed(f"{self.safe_url}: lost while restoring")
            except self.attempt_failures as error:
                if self.closing:
                    self._shut()
                    return
                self.logger.warning(
                    "reconnecting to %s failed (attempt %d): %s; next try in %.1f s",
                    self.safe_url,
                    attempt,
                    error,
                    delay,
                )
                self._abandon()
                if self._closed.wait(delay):
                    return
                delay = min(RECONNECT_MAX_DELAY, delay * 2)
                continue
            self.logger.warning(
                "reconnected to %s after %d attempt(s); %d subscription(s) restored",
                self.safe_url,
                attempt,
                restored,
            )
            return

    # -- closing ----------------------------------------------------------------------
    def _stop_reconnecting(self) -> None:
        """From now on no attempt starts, and one under way shuts what it opens."""
        self.closing = True
        self._closed.set()

    def close(self) -> None:
        """Close, stopping a reconnect under way: it never reopens what was closed."""
        self._stop_reconnecting()
        self._shut()
        reconnector = self._reconnector
        if reconnector is not None and reconnector is not threading.current_thread():
            reconnector.join(self._close_wait)
