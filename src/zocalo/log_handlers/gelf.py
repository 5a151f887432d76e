"""GELF 1.1 (Graylog Extended Log Format) handlers for UDP and TCP.

* UDP: zlib-compressed JSON, one datagram per record; a record larger than
  ``chunk_size`` is split into GELF chunks (magic ``0x1e 0x0f``, an 8-byte message ID,
  the sequence number and the sequence count, then the payload), at most 128 of them.
  A record too large even for 128 chunks has its message fields truncated.
* TCP: uncompressed JSON terminated by a NUL byte, on one kept-open connection that is
  re-opened (with the standard :class:`logging.handlers.SocketHandler` back-off) after a
  failure. A send that cannot complete within ``timeout`` seconds drops the record.

Both handlers do network I/O in :meth:`emit`; put them behind
:class:`zocalo.log_handlers.queueing.NonBlockingHandler` so that a slow or unreachable
Graylog never holds up the thread that logs.

Every message carries ``_logger``, ``_file``, ``_line``, ``_function``, ``_service`` (if
known), ``_recipe_ID`` and ``_recipe_step`` (if set, see :mod:`zocalo.logs`), any ``extra``
fields of the record, and ``level`` as a syslog severity. The exception traceback, if
any, is in ``full_message``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import math
import os
import re
import socket
import zlib
from collections.abc import Iterator
from typing import Any

#: A chunk's payload size on a LAN (the GELF spec's upper bound, 8192 bytes a datagram).
LAN_CHUNK = 8154
#: A chunk's payload size that crosses the Internet without IP fragmentation.
WAN_CHUNK = 1420
#: The GELF spec's limit on the chunks of one message.
MAX_CHUNKS = 128
CHUNK_MAGIC = b"\x1e\x0f"

#: Attributes every LogRecord has: not forwarded as additional fields.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
#: Fields set explicitly by :func:`gelf_dict`.
_OWN_FIELDS = frozenset({"recipe_ID", "recipe_step", "service"})
_FIELD_NAME = re.compile(r"^[\w.\-]+$")


def syslog_level(levelno: int) -> int:
    """The syslog severity of a Python log level (CRITICAL 2 ... DEBUG 7)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _field_value(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return value
    return repr(value)


def _full_message(record: logging.LogRecord, message: str) -> str | None:
    exception = record.exc_text
    if not exception and record.exc_info:
        exception = logging.Formatter().formatException(record.exc_info)
    parts = [part for part in (exception, record.stack_info) if part]
    if not parts:
        return None
    return "\n".join([message, *parts])


def gelf_dict(
    record: logging.LogRecord, *, host: str, service: str | None = None
) -> dict[str, Any]:
    """The GELF 1.1 message for ``record``, as a dict ready for :func:`json.dumps`."""
    message = record.getMessage()
    entry: dict[str, Any] = {
        "version": "1.1",
        "host": host,
        "short_message": message,
        "timestamp": round(record.created, 6),
        "level": syslog_level(record.levelno),
        "_logger": record.name,
        "_level_name": record.levelname,
        "_file": record.pathname,
        "_line": record.lineno,
        "_function": record.funcName,
        "_pid": record.process,
        "_thread_name": record.threadName,
    }
    full = _full_message(record, message)
    if full:
        entry["full_message"] = full
    service = service or getattr(record, "service", None)
    if service:
        entry["_service"] = service
    for name in ("recipe_ID", "recipe_step"):
        value = getattr(record, name, None)
        if value is not None:
            entry["_" + name] = _field_value(value)
    for key, value in vars(record).items():
        if (
            key in _RECORD_ATTRIBUTES
            or key in _OWN_FIELDS
            or key.startswith("_")
            or key == "id"  # _id is reserved by GELF
            or value is None
            or not _FIELD_NAME.match(key)
        ):
            continue
        entry.setdefault("_" + key, _field_value(value))
    return entry


def encode(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":"), default=repr).encode("utf-8")


class GELFHandler(logging.Handler):
    """What the UDP and TCP handlers share: the host name, the service, the encoding."""

    def _gelf_init(self, service: str | None, localname: str | None) -> None:
        self.service = service
        self.localname = localname or socket.gethostname()

    def gelf_bytes(self, record: logging.LogRecord) -> bytes:
        return encode(gelf_dict(record, host=self.localname, service=self.service))


class GELFUDPHandler(GELFHandler, logging.handlers.DatagramHandler):
    """GELF over UDP: zlib-compressed (unless ``compress=False``), chunked when large."""

    def __init__(
        self,
        host: str,
        port: int = 12201,
        *,
        service: str | None = None,
        localname: str | None = None,
        compress: bool = True,
        chunk_size: int = LAN_CHUNK,
    ) -> None:
        logging.handlers.DatagramHandler.__init__(self, host, port)
        self._gelf_init(service, localname)
        self.compress = compress
        self.chunk_size = chunk_size

    def _pack(self, entry: dict[str, Any]) -> bytes:
        data = encode(entry)
        return zlib.compress(data) if self.compress else data

    def makePickle(self, record: logging.LogRecord) -> bytes:
        entry = gelf_dict(record, host=self.localname, service=self.service)
        data = self._pack(entry)
        limit = self.chunk_size * MAX_CHUNKS
        while len(data) > limit:
            # Too large for 128 chunks: halve the long fields until it fits.
            longest = max(
                (key for key, value in entry.items() if isinstance(value, str)),
                key=lambda key: len(entry[key]),
            )
            text = entry[longest]
            if len(text) < 64:
                break  # nothing left to cut; send() will drop it
            entry[longest] = text[: len(text) // 2] + " [truncated]"
            entry["_truncated"] = "true"
            data = self._pack(entry)
        return data

    def chunks(self, data: bytes) -> Iterator[bytes]:
        """``data`` as datagrams: itself if small enough, else GELF chunks."""
        if len(data) <= self.chunk_size:
            yield data
            return
        count = math.ceil(len(data) / self.chunk_size)
        if count > MAX_CHUNKS:
            raise ValueError(f"GELF message of {len(data)} bytes needs {count} chunks (max 128)")
        message_id = os.urandom(8)
        for seq in range(count):
            payload = data[seq * self.chunk_size : (seq + 1) * self.chunk_size]
            yield CHUNK_MAGIC + message_id + bytes((seq, count)) + payload

    def send(self, s: bytes) -> None:  # type: ignore[override]  # we send bytes only
        for datagram in self.chunks(s):
            logging.handlers.DatagramHandler.send(self, datagram)


class GELFTCPHandler(GELFHandler, logging.handlers.SocketHandler):
    """GELF over TCP: NUL-terminated, uncompressed JSON (the GELF TCP framing)."""

    def __init__(
        self,
        host: str,
        port: int = 12201,
        *,
        service: str | None = None,
        localname: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        logging.handlers.SocketHandler.__init__(self, host, port)
        self._gelf_init(service, localname)
        self.timeout = timeout

    def makeSocket(self, timeout: float = 1) -> socket.socket:
        # The timeout also bounds every later sendall() on this socket.
        return super().makeSocket(self.timeout)

    def makePickle(self, record: logging.LogRecord) -> bytes:
        return self.gelf_bytes(record) + b"\0"

    def abort(self) -> None:
        """Break off a send that is stuck on an endpoint that does not read.

        Safe to call from another thread while :meth:`emit` holds the handler's lock.
        """
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
