"""One STOMP connection on stomp.py: opening it, writing frames, receipts, reconnecting.

stomp.py owns the socket, reads and parses frames on its receiver thread and
keeps the heart-beats; we write frames ourselves (:func:`frame_bytes`), a whole
batch in one ``sendall`` with Nagle off, so a publish and the acks it releases
never wait on each other in the kernel. stomp.py's send is thread-safe, so
any thread may write.

A *receipt* is the broker's answer to one frame: :meth:`Link.receipt` books an
id and what to do with the answer (None, or the broker's error text), the
frame carries it in its ``receipt`` header. Answers, and every other frame,
arrive on the receiver thread, which is where the owner's hooks run: they must
not wait on the broker.

It also turns stomp.py's silent failures (nothing listening, an ``ERROR``
frame for the credentials) into one sentence, and gives
:mod:`zocalo.transport.reconnect` (which opens the first node that answers,
and after an unexpected loss reconnects with growing delays) stomp.py's part:
opening one node, and shutting a connection. What a new connection needs
(subscriptions) and what a lost one leaves behind (receipts never to come,
deliveries the broker takes back) belongs to the owner, told through hooks.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import stomp
import stomp.exception
from stomp.utils import Frame

from zocalo.errors import ConnectionFailed, TransportError
from zocalo.transport.base import Confirmation
from zocalo.transport.reconnect import Reconnecting
from zocalo.transport.stomp.headers import escape
from zocalo.transport.stomp.temporary import Numbering, names_temporary
from zocalo.transport.stomp.url import Endpoint

log = logging.getLogger(__name__)

#: What a receipt's answer is handed: None when the broker processed the frame, else
#: why not (its ERROR frame's message, or the connection's loss).
Answer = Callable[[str | None], None]
#: One frame to write: command, headers (unescaped text), body.
WireFrame = tuple[str, Mapping[str, str], bytes]


class _StompPyLines(logging.Filter):
    """What stomp.py logs, made fit to show.

    It warns of every refused connection attempt, and logs a write to a connection the
    broker cut off with a traceback; we explain both failures ourselves, in one line,
    so its own lines would only say it twice. At DEBUG (``-vv``) it logs every frame
    it sends, the CONNECT's ``passcode`` in clear (its own mask wants a space after the
    colon, which it never writes): hidden here, with everything after it (the last
    header, then the frame's end), so no quoting in it can show a part.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_SAID_BY_US):
            return False
        if str(record.msg).startswith("sending frame"):
            text = record.getMessage()
            secret = text.find(_PASSCODE)
            if secret >= 0:
                record.msg, record.args = text[: secret + len(_PASSCODE)] + "***", None
        return True


_PASSCODE = "passcode:"
_SAID_BY_US = ("could not connect to host", "error sending frame")

logging.getLogger("stomp.py").addFilter(_StompPyLines())


def frame_bytes(command: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """A STOMP 1.2 frame as written on the wire (``content-length`` given by the caller)."""
    head = "".join(f"{escape(name)}:{escape(value)}\n" for name, value in headers.items())
    return f"{command}\n{head}\n".encode() + body + b"\x00"


class Link(Reconnecting[tuple[str, int]]):
    """A connection to the first node of the endpoint that answers, kept open until closed.

    Hooks, all on stomp.py's receiver thread except ``on_reconnected``:
    ``on_message(frame)`` for each MESSAGE frame; ``on_error(text)`` for an ERROR
    frame that names no receipt; ``on_lost(reason)`` when an
    open connection closes; ``on_reconnected()`` on the reconnecting thread,
    returning how many subscriptions it restored (a :class:`TransportError`
    from it counts as a failed attempt). ``client_id`` names the connection to
    the broker (a durable subscription belongs to one).
    """

    thread_name = "stomp-reconnect"
    logger = log

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        on_message: Callable[[Frame], None],
        on_error: Callable[[str], None] = lambda text: None,
        on_lost: Callable[[str], None] = lambda reason: None,
        on_reconnected: Callable[[], int] = lambda: 0,
        client_id: str | None = None,
        reconnect: bool = True,
    ) -> None:
        # An attempt under way when close() comes may wait that long for the broker.
        super().__init__(
            endpoint.nodes,
            endpoint.safe_url,
            on_reconnected=on_reconnected,
            close_wait=endpoint.timeout + 5,
        )
        self.endpoint = endpoint
        self.client_id = client_id
        self._on_message = on_message
        self._on_unreceipted_error = on_error
        self._on_lost = on_lost
        self._reconnects = reconnect
        self._stomp: stomp.Connection12 | None = None
        #: The node connected to (or being tried).
        self.node = endpoint.nodes[0]
        #: The CONNECTED frame's ``server`` header ("" until connected, or if it has none).
        self.server = ""
        #: Counts the connections opened: a receipt or ack id of an older one means nothing.
        self.generation = 0
        self._receipts: dict[str, Answer] = {}
        self._receipt_ids = itertools.count(1)
        #: The broker's ids of the open connection's temporary queues (see
        #: :mod:`.temporary`); frames naming one are written one writer at a time.
        self.temporary = Numbering(None)
        self._temporary_lock = threading.Lock()
        self._answering = 0
        self._lock = threading.Condition()

    # -- opening --------------------------------------------------------------
    def _where(self) -> str:
        broker = self.server.split("/")[0] or "ActiveMQ"  # unknown until it answers
        where = f"{broker} at {self.safe_url}"
        if len(self.endpoint.nodes) > 1:
            where += f" (node {self.node[0]}:{self.node[1]})"
        return where

    def _open_node(self, node: tuple[str, int]) -> None:
        self.node = node
        host, port = node
        beat = self.endpoint.heartbeat * 1000
        connection = stomp.Connection12(
            [(host, port)],
            heartbeats=(beat, beat),
            reconnect_attempts_max=1,
            timeout=self.endpoint.timeout,
            auto_decode=False,
            prefer_localhost=False,
            try_loopback_connect=False,
            vhost=self.endpoint.vhost or None,
        )
        listener = _Listener(self, connection)
        connection.set_listener("zocalo", listener)
        headers = {"client-id": self.client_id} if self.client_id else {}
        try:
            connection.connect(
                self.endpoint.login, self.endpoint.passcode, wait=False, headers=headers
            )
        except (
            stomp.exception.ConnectFailedException,
            # Closed before the CONNECT frame went out (stomp.py's receiver saw it first).
            stomp.exception.NotConnectedException,
            OSError,
        ):
            raise ConnectionFailed(
                f"cannot connect to {self._where()}: {_unreachable(host, port, self.endpoint)}"
            ) from None
        answered = listener.answered.wait(self.endpoint.timeout)
        if not listener.connected:
            _drop(connection)
            if not answered:
                raise ConnectionFailed(
                    f"{self._where()} did not answer the STOMP CONNECT within "
                    f"{self.endpoint.timeout:g} s (is it a STOMP port?)"
                )
            if listener.refusal is None:
                raise ConnectionFailed(f"{self._where()} closed the connection at once")
            raise ConnectionFailed(_explain_refusal(self._where(), listener.refusal))
        _no_waiting(connection)
        with self._lock:
            self._stomp = connection
            self.temporary = Numbering(listener.session)
            self.generation += 1
            self.is_open = True
        if not connection.is_connected():  # lost before it was ours: no one saw it go
            self._release(connection)
            raise ConnectionFailed(f"{self._where()} closed the connection at once")

    # -- frames and receipts -----------------------------------------------------
    def receipt(self, answer: Answer) -> str:
        """Book a receipt id: ``answer`` is called once with the broker's answer."""
        with self._lock:
            receipt = f"{self.generation}.{next(self._receipt_ids)}"
            self._receipts[receipt] = answer
        return receipt

    def forget(self, receipts: Sequence[str]) -> None:
        """Drop bookings whose frames were never written."""
        with self._lock:
            for receipt in receipts:
                self._receipts.pop(receipt, None)

    def write(self, frames: Sequence[WireFrame]) -> None:
        """Write ``frames`` in one go; ConnectionFailed if the connection is not open."""
        connection, numbering = self._stomp, self.temporary
        if not self.is_open or connection is None:
            raise ConnectionFailed(f"{self.safe_url}: transport is not connected")
        data = b"".join(frame_bytes(command, headers, body) for command, headers, body in frames)
        if names_temporary(frames):
            with self._temporary_lock:  # numbered in the order the broker reads them
                numbering.note(frames)
                self._send(connection, data)
        else:
            self._send(connection, data)

    def _send(self, connection: stomp.Connection12, data: bytes) -> None:
        try:
            connection.transport.send(data)
        except (OSError, stomp.exception.NotConnectedException) as error:
            raise ConnectionFailed(
                f"{self.safe_url}: the connection was lost ({type(error).__name__}: {error})"
            ) from None

    def call(self, command: str, headers: Mapping[str, str], timeout: float | None = None) -> None:
        """Write one frame and wait for the broker's receipt; TransportError if it refuses."""
        answered: Confirmation = Confirmation()
        receipt = self.receipt(answered.set_result)
        try:
            self.write([(command, {**headers, "receipt": receipt}, b"")])
        except ConnectionFailed:
            self.forget([receipt])
            raise
        wait = self.endpoint.timeout if timeout is None else timeout
        try:
            refusal = answered.result(wait)
        except TimeoutError:
            self.forget([receipt])
            raise TransportError(
                f"{self.safe_url}: no answer from the broker within {wait:g} s to {command}"
            ) from None
        if refusal is not None:
            raise TransportError(f"{self.safe_url}: {command} refused: {refusal}")

    def on_receiver_thread(self) -> bool:
        """Whether this is the open connection's receiver thread (where answers run:
        nothing more is answered while it waits)."""
        connection = self._stomp
        transport: Any = connection.transport if connection is not None else None
        return getattr(transport, "io_thread", None) is threading.current_thread()

    def wait_for_receipts(self, timeout: float) -> bool:
        """Wait until every booked receipt is answered, and what its answer does is done
        (or the connection is lost)."""
        with self._lock:
            return self._lock.wait_for(
                lambda: (not self._receipts and not self._answering) or not self.is_open,
                timeout,
            )

    # -- from stomp.py's receiver thread ------------------------------------------
    def _answered(self, receipt: str, refusal: str | None) -> None:
        with self._lock:
            answer = self._receipts.pop(receipt, None)
            if answer is None:
                return
            self._answering += 1
        try:
            answer(refusal)
        finally:
            with self._lock:
                self._answering -= 1
                self._lock.notify_all()

    def _on_frame(self, frame: Frame) -> None:
        self._on_message(frame)

    def _on_error(self, frame: Frame) -> None:
        message = frame.headers.get("message") or frame.body.decode("utf-8", "replace")
        receipt = frame.headers.get("receipt-id")
        if receipt is not None:
            self._answered(receipt, message.strip() or "ERROR")
        else:
            log.warning("%s sent an error: %s", self._where(), message.strip())
            self._on_unreceipted_error(message.strip() or "ERROR")

    def _on_disconnected(self, connection: stomp.Connection12) -> None:
        if not self._release(connection) or self.closing or not self._reconnects:
            return
        log.warning("connection to %s lost; reconnecting", self._where())
        self._start_reconnecting()

    def _release(self, connection: stomp.Connection12) -> bool:
        """``connection`` is no longer open: answer what it still owed, tell the owner.
        False if it was not the open connection (already released, or replaced)."""
        with self._lock:
            if connection is not self._stomp or not self.is_open:
                return False
            self.is_open = False
            pending = list(self._receipts.values())
            self._receipts.clear()
            self._lock.notify_all()
        reason = "closed" if self.closing else "lost"
        for answer in pending:
            answer(f"the connection to {self.safe_url} was {reason} before the broker answered")
        self._on_lost(f"connection {reason}")
        return True

    # -- closing ---------------------------------------------------------------------
    def close(self, drain: float = 0.0) -> None:
        """Close: first wait up to ``drain`` s for booked receipts (what they release,
        acks of confirmed inputs, goes out before the goodbye), then say goodbye.

        A reconnect under way is stopped and never reopens what was closed.
        """
        if drain and self.is_open:
            self.wait_for_receipts(drain)
        super().close()

    def abort(self) -> None:
        """Drop the connection as a crash would: no goodbye, the socket just closes."""
        self._stop_reconnecting()
        self._shut(goodbye=False)

    def _abandon(self) -> None:
        """After a failed attempt: drop its connection, if it opened one (what it
        booked is answered, the owner told of the loss), without a goodbye."""
        self._shut(goodbye=False)

    def _shut(self, goodbye: bool = True) -> None:
        """Close the connection (with a DISCONNECT the broker receipts, if ``goodbye``)."""
        connection = self._stomp
        if connection is None:
            return
        said_goodbye = False
        if goodbye and self.is_open:
            with contextlib.suppress(TransportError):
                self.call("DISCONNECT", {}, timeout=min(self.endpoint.timeout, 5.0))
                said_goodbye = True
        self._release(connection)
        _drop(connection, linger=1.0 if said_goodbye else 0.0)


class _Listener(stomp.ConnectionListener):
    """stomp.py's callbacks for one connection, handed to its :class:`Link`."""

    def __init__(self, link: Link, connection: stomp.Connection12) -> None:
        self.link = link
        self.connection = connection
        self.answered = threading.Event()
        self.connected = False
        self.refusal: str | None = None
        #: The broker's id for the connection (ActiveMQ's, see :mod:`.temporary`).
        self.session: str | None = None

    def on_connected(self, frame: Frame) -> None:
        self.link.server = frame.headers.get("server", "")
        self.session = frame.headers.get("session")
        self.connected = True
        self.answered.set()

    def on_error(self, frame: Frame) -> None:
        if not self.answered.is_set():
            headers = frame.headers
            self.refusal = (headers.get("message") or frame.body.decode("utf-8", "replace")).strip()
            self.answered.set()
            return
        self.link._on_error(frame)

    def on_message(self, frame: Frame) -> None:
        self.link._on_frame(frame)

    def on_receipt(self, frame: Frame) -> None:
        self.link._answered(frame.headers.get("receipt-id", ""), None)

    def on_disconnected(self) -> None:
        self.connected = False
        self.answered.set()
        self.link._on_disconnected(self.connection)

    def on_heartbeat_timeout(self) -> None:
        log.warning("%s: no heart-beat from the broker in time", self.link.safe_url)


#: Linux only: acknowledge received segments at once (re-armed after each read).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _QuickAcks:
    """stomp.py's socket, acknowledging what it reads at once.

    ActiveMQ writes with Nagle's algorithm on (its connectors' default): a frame
    written while an earlier one is unacknowledged waits for our TCP
    acknowledgement, which Linux delays up to 40 ms. A delivery, a receipt and
    the next delivery would each wait that long.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    def recv(self, size: int) -> bytes:
        data = self._socket.recv(size)
        with contextlib.suppress(OSError):
            self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def _no_waiting(connection: stomp.Connection12) -> None:
    """Nagle off for what we write, delayed acknowledgements off for what we read."""
    transport: Any = connection.transport
    sock = transport.socket
    if not isinstance(sock, socket.socket):
        return  # TLS or already wrapped: leave it as it is
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        transport.socket = _QuickAcks(sock)


def _drop(connection: stomp.Connection12, linger: float = 0.0) -> None:
    """Close stomp.py's socket (no goodbye) and wait for its receiver thread to end.

    ``linger``: first give the broker that long to close it (after a DISCONNECT),
    so stomp.py does not shut down a socket its receiver thread just closed.
    """
    transport: Any = connection.transport
    thread: threading.Thread | None = getattr(transport, "io_thread", None)
    if thread is threading.current_thread():
        thread = None
    if linger and thread is not None:
        thread.join(linger)
    if transport.socket is not None:
        with contextlib.suppress(Exception):
            transport.disconnect_socket()
    if thread is not None:
        thread.join(5)


def _unreachable(host: str, port: int, endpoint: Endpoint) -> str:
    """Why nothing answered at ``host:port`` (stomp.py only says that nothing did)."""
    try:
        with socket.create_connection((host, port), timeout=endpoint.timeout):
            return "the connection closed at once"
    except OSError as error:
        return f"{host}:{port}: {error.strerror or error}"


def _explain_refusal(where: str, message: str) -> str:
    first = message.splitlines()[0] if message else "ERROR frame"
    lowered = first.lower()
    if "password" in lowered or "user name" in lowered or "security" in lowered:
        return f"{where} refused the credentials ({first})"
    return f"{where} refused the connection ({first})"
