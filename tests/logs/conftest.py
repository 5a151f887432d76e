"""A real GELF listener (UDP and TCP), and isolation of the root logger.

The listener is what a Graylog input does, in miniature: UDP datagrams are decoded
(zlib, gzip or plain JSON) and GELF chunks reassembled by message ID; a TCP stream is
split on NUL bytes. Tests wait on its condition with a deadline, never sleep.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

WAIT = 10.0  # seconds: a deadline for delivery, never a sleep


def decode_payload(payload: bytes) -> dict[str, Any]:
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    elif payload[:1] == b"\x78":
        payload = zlib.decompress(payload)
    return json.loads(payload.decode("utf-8"))


class GELFListener:
    """A GELF input on 127.0.0.1: ``protocol`` is ``UDP`` or ``TCP``."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.messages: list[dict[str, Any]] = []
        self.datagrams = 0
        self.chunks = 0
        self.errors: list[str] = []
        self.condition = threading.Condition()
        self._partial: dict[bytes, dict[int, bytes]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        if protocol == "UDP":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        if protocol == "TCP":
            self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self._spawn(self._serve_udp if protocol == "UDP" else self._serve_tcp)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _deliver(self, payload: bytes) -> None:
        try:
            message = decode_payload(payload)
        except Exception as error:
            with self.condition:
                self.errors.append(repr(error))
                self.condition.notify_all()
            return
        with self.condition:
            self.messages.append(message)
            self.condition.notify_all()

    def _datagram(self, data: bytes) -> None:
        with self.condition:
            self.datagrams += 1
        if data[:2] != b"\x1e\x0f":
            self._deliver(data)
            return
        message_id, seq, count = data[2:10], data[10], data[11]
        with self.condition:
            self.chunks += 1
            if not (0 < count <= 128 and seq < count):
                self.errors.append(f"bad chunk header seq={seq} count={count}")
                return
            parts = self._partial.setdefault(message_id, {})
            parts[seq] = data[12:]
            if len(parts) < count:
                return
            del self._partial[message_id]
        self._deliver(b"".join(parts[i] for i in range(count)))

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self._datagram(data)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(0.1)
            self._connections.append(connection)
            self._spawn(self._read_stream, connection)

    def _read_stream(self, connection: socket.socket) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            *frames, buffer = buffer.split(b"\0")
            for frame in frames:
                self._deliver(frame)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        """The first message satisfying ``predicate``, waiting up to ``timeout`` seconds."""

        def found() -> dict[str, Any] | None:
            return next((m for m in self.messages if predicate(m)), None)

        with self.condition:
            self.condition.wait_for(lambda: found() is not None or self.errors, timeout)
            assert not self.errors, self.errors
            message = found()
        assert message is not None, f"no matching GELF message within {timeout}s: {self.messages}"
        return message

    def close(self) -> None:
        self._stop.set()
        for connection in self._connections:
            connection.close()
        self.sock.close()
        for thread in self._threads:
            thread.join(2)


class BlackHole:
    """A TCP endpoint that accepts connections and never reads from them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Inherited by accepted sockets: a tiny receive window fills at once.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = threading.Condition()
        self._stop = threading.Event()
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.accepted:
                self.connections.append(connection)
                self.accepted.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for connection in self.connections:
            connection.close()
        self.sock.close()


@pytest.fixture
def attach(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[logging.Handler], logging.Handler]]:
    """Attach handlers to the test module's ``log`` logger for one test."""
    log: logging.Logger = request.module.log
    attached: list[logging.Handler] = []

    def _attach(handler: logging.Handler) -> logging.Handler:
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        attached.append(handler)
        return handler

    yield _attach
    for handler in attached:
        log.removeHandler(handler)
        handler.close()
    log.setLevel(logging.NOTSET)


@pytest.fixture
def udp_listener() -> Iterator[GELFListener]:
    listener = GELFListener("UDP")
    yield listener
    listener.close()


@pytest.fixture
def tcp_listener() -> Iterator[GELFListener]:
    listener = GELFListener("TCP")
    yield listener
    listener.close()


@pytest.fixture(params=["UDP", "TCP"])
def gelf_listener(request: pytest.FixtureRequest) -> Iterator[GELFListener]:
    listener = GELFListener(request.param)
    yield listener
    listener.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _loggers() -> dict[str, logging.Logger]:
    return {
        name: logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    }


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging and dictConfig reconfigure loggers: put them back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    states = {
        name: (logger.level, logger.disabled, logger.propagate, list(logger.handlers))
        for name, logger in _loggers().items()
    }
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for name, logger in _loggers().items():
        old_level, disabled, propagate, old_handlers = states.get(
            name, (logging.NOTSET, False, True, [])
        )
        logger.setLevel(old_level)
        logger.disabled, logger.propagate = disabled, propagate
        for handler in list(logger.handlers):
            if handler not in old_handlers:
                logger.removeHandler(handler)
