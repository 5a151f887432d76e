"""Dead letters on disk, in python-zocalo's layout, so that its tools and ours read each
other's files.

One message per file, JSON with sorted keys and an indent of 2::

    {"exported": {"date": "YYYY-MM-DD", "time": "HH:MM:SS"},
     "header": {...the headers as delivered, and "message-id"...},
     "message": <the decoded body>}

at ``<location>/<YYYY-MM-DD>/msg-<YYYYMMDD-HHMMSS>-<mmm>-<message id>`` (the message id
with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``), the date and time being
when the message was dead-lettered, in local time. A body that is not JSON is kept
exactly: as its text, or base64 when it is not UTF-8, with ``"message-encoding":
"text"`` or ``"base64"`` beside it (python-zocalo's tools ignore the key).

A dead letter carries whatever its job carried, so files are private: ``0600`` in
``0700`` directories (those this module creates), whatever the umask. A file is
complete and on disk (file and directory fsynced) before :func:`export` returns, so a
caller may then acknowledge the message: a crash loses nothing. Exporting the same
message twice (a crash between the file and the ack) gives one file, not two.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocalo.dlq.errors import UnreadableFile
from zocalo.private_files import (  # re-exported: the dlq tools' files
    SameContent as SameContent,
)
from zocalo.private_files import (
    fsync_directory as fsync_directory,
)
from zocalo.private_files import (
    make_private_directories as make_private_directories,
)
from zocalo.private_files import (
    read_bytes_or_empty,
)
from zocalo.private_files import (
    write_private as write_private,
)
from zocalo.transport.dead_letters import DLQ_HISTORY_HEADER, calendar_seconds, entry_seconds

#: The key naming how a body that is not JSON was kept.
ENCODING_KEY = "message-encoding"
ENCODINGS = ("text", "base64")
#: The header a file's message id is kept under (python-zocalo names files after it).
MESSAGE_ID_HEADER = "message-id"
_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")
#: ``same(existing, new)``: whether an existing file already holds what is being written.


@dataclass(frozen=True)
class DeadLetterFile:
    """One dead letter read back from disk."""

    path: Path
    header: dict[str, Any]
    message: Any
    #: None: ``message`` is the decoded JSON body; else one of :data:`ENCODINGS`.
    encoding: str | None = None

    def body(self) -> bytes:
        """The message's body as it travels: JSON, or the kept text or bytes."""
        return encode_body(self.message, self.encoding)


def decode_body(body: bytes) -> tuple[Any, str | None]:
    """``body`` as a file keeps it: ``(decoded JSON, None)``, else ``(text, "text")``,
    else ``(base64 text, "base64")``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return text, "text"


def encode_body(message: Any, encoding: str | None) -> bytes:
    """The inverse of :func:`decode_body`."""
    if encoding == "text":
        return str(message).encode("utf-8")
    if encoding == "base64":
        return base64.b64decode(str(message), validate=True)
    return json.dumps(message).encode("utf-8")


def dead_lettered_at(headers: Mapping[str, Any]) -> float | None:
    """When the message was dead-lettered (epoch seconds), if its headers say (a time no
    calendar shows is passed over: see :func:`calendar_seconds`).

    RabbitMQ's ``x-death`` (newest first, whole seconds), ActiveMQ's ``timestamp``
    (milliseconds), else the newest dated entry of our ``zocalo-dlq-history``.
    """
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        when = calendar_seconds(_number(deaths[0].get("time")))
        if when is not None:
            return when
    stamp = _number(headers.get("timestamp"))
    if (when := calendar_seconds(None if stamp is None else stamp / 1000)) is not None:
        return when
    history = headers.get(DLQ_HISTORY_HEADER)
    if isinstance(history, list):
        for entry in reversed(history):
            if (when := entry_seconds(entry)) is not None:
                return when
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def file_path(location: Path, when: float, message_id: str) -> Path:
    """Where python-zocalo's ``dlq_purge`` puts a message dead-lettered at ``when``."""
    local = time.localtime(when)
    milliseconds = int(when * 1000) % 1000
    name = (
        f"msg-{time.strftime('%Y%m%d-%H%M%S', local)}-{milliseconds:03d}-"
        f"{_UNSAFE.sub('_', message_id)}"
    )
    return location / time.strftime("%Y-%m-%d", local) / name


def file_content(
    headers: Mapping[str, Any], body: bytes, message_id: str, exported: float
) -> dict[str, Any]:
    """What a file holds for one message."""
    message, encoding = decode_body(body)
    local = time.localtime(exported)
    content: dict[str, Any] = {
        "exported": {
            "date": time.strftime("%Y-%m-%d", local),
            "time": time.strftime("%H:%M:%S", local),
        },
        "header": {**headers, MESSAGE_ID_HEADER: message_id},
        "message": message,
    }
    if encoding is not None:
        content[ENCODING_KEY] = encoding
    return content


@dataclass(frozen=True)
class Exported:
    """A message written to disk: which, when it was dead-lettered, and where it is."""

    queue: str
    message_id: str
    dead_lettered: float
    path: Path


def export(
    location: Path,
    queue: str,
    headers: Mapping[str, Any],
    body: bytes,
    message_id: str,
    *,
    now: float | None = None,
    redelivered: bool = False,
) -> Exported:
    """Write one message of ``queue`` under ``location``, durably and privately.

    Returns once file and directory are fsynced. A file of that name holding this same
    message is kept and returned; one holding another message is left alone, and this
    one gets a numbered name beside it. A ``redelivered`` message (maybe exported before
    a crash, then not acknowledged) is also looked for under its message id in the last
    two days' directories, in case its name was dated with the time of that export.
    """
    now = time.time() if now is None else now
    when = dead_lettered_at(headers) or now
    content = file_content(headers, body, message_id, now)
    data = (json.dumps(content, indent=2, sort_keys=True) + "\n").encode("utf-8")
    path = file_path(location, when, message_id)
    if redelivered and (earlier := _earlier_export(location, path, (now, now - 86400), data)):
        return Exported(queue, message_id, when, earlier)
    return Exported(queue, message_id, when, write_private(path, data, same=_same_message))


def _earlier_export(
    location: Path, path: Path, days: tuple[float, ...], data: bytes
) -> Path | None:
    """A file holding the message of ``data`` whose name ends like ``path``'s, if any."""
    suffix = path.name.split("-", 4)[4]  # msg-<date>-<time>-<ms>-<message id>
    directories = {path.parent} | {
        location / time.strftime("%Y-%m-%d", time.localtime(day)) for day in days
    }
    for directory in directories:
        try:
            names = [entry.name for entry in os.scandir(directory)]
        except OSError:
            continue
        for name in names:
            if not name.startswith("msg-"):
                continue
            rest = name.split("-", 4)[4] if name.count("-") >= 4 else ""
            base, _, number = rest.rpartition("-")
            if rest != suffix and not (base == suffix and number.isdigit()):
                continue
            if _same_message(read_bytes_or_empty(directory / name), data):
                return directory / name
    return None


def _same_message(existing: bytes, new: bytes) -> bool:
    """Whether two files hold the same message (their export times aside)."""
    try:
        old, fresh = json.loads(existing), json.loads(new)
    except ValueError:
        return False
    if not isinstance(old, dict):
        return False
    keys = ("header", "message", ENCODING_KEY)
    return all(old.get(key) == fresh.get(key) for key in keys)


def read_dead_letter(path: Path | str) -> DeadLetterFile:
    """Read one file; :class:`UnreadableFile` (naming it) if it is not a dead letter."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UnreadableFile(f"{path}: a directory, not a dead-letter file") from None
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path}: not a dead-letter file (not UTF-8 text)") from None
    except OSError as error:
        raise UnreadableFile(f"{path}: cannot be read ({error.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UnreadableFile(f"{path}: not a dead-letter file (invalid JSON: {error})") from None
    except RecursionError:
        raise UnreadableFile(f"{path}: not a dead-letter file (JSON nested too deeply)") from None
    return _dead_letter(path, data)


def _dead_letter(path: Path, data: Any) -> DeadLetterFile:
    what = f"{path}: not a dead-letter file"
    if not isinstance(data, dict):
        raise UnreadableFile(f"{what} (JSON {type(data).__name__}, not an object)")
    header = data.get("header")
    if not isinstance(header, dict):
        raise UnreadableFile(f'{what} (no "header" object)')
    if "message" not in data:
        raise UnreadableFile(f'{what} (no "message")')
    message, encoding = data["message"], data.get(ENCODING_KEY)
    if encoding is not None:
        if encoding not in ENCODINGS or not isinstance(message, str):
            raise UnreadableFile(
                f'{what} ("{ENCODING_KEY}" is {encoding!r}: expected one of '
                f'{", ".join(ENCODINGS)}, with "message" a string)'
            )
        if encoding == "base64":
            try:
                base64.b64decode(message, validate=True)
            except binascii.Error:
                raise UnreadableFile(f'{what} ("message" is not valid base64)') from None
    return DeadLetterFile(path, header, message, encoding)
