"""``zocalo.pickup``: send the requests ``zocalo.go`` left on disk while the broker was away.

``zocalo.go`` writes a request it could not send to ``<fallback location>/<uuid4>``:
``{"headers": {...}, "message": {...}}``, pretty JSON (python-zocalo's format). Pickup
sends them to ``processing_recipe``, oldest first, each with its stored headers, and
deletes a file only once the broker confirmed its message: interrupted, it leaves every
request either sent or still on disk. Names starting with ``.`` are files still being
written and are left alone. Every file is read before anything is sent: one that is not
a request stops the run with an error naming it, and nothing is sent. Only one pickup
sends from a directory at a time (it holds an exclusive lock on the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocalo.dlq.errors import DeadLetterError, UnreadableFile
from zocalo.errors import ZocaloError
from zocalo.transport.base import Transport

#: Where the Dispatcher reads requests, and where picked-up requests go.
PROCESSING_QUEUE = "processing_recipe"
#: The storage key naming the directory (python-zocalo's).
FALLBACK_LOCATION_KEY = "zocalo.go.fallback_location"


@dataclass(frozen=True)
class DropFile:
    """One request ``zocalo.go`` could not send."""

    path: Path
    headers: dict[str, Any]
    message: Any
    modified: float

    @property
    def host(self) -> str | None:
        host = self.headers.get("zocalo.go.host")
        return None if host is None else str(host)

    @property
    def recipes(self) -> str:
        recipes = self.message.get("recipes") if isinstance(self.message, dict) else None
        return ",".join(map(str, recipes)) if isinstance(recipes, list) else ""


def drop_files(directory: Path) -> list[Path]:
    """The request files in ``directory``, oldest first (by modification time)."""
    try:
        entries = [entry for entry in os.scandir(directory) if not entry.name.startswith(".")]
        dated = [(entry.stat().st_mtime, entry.name) for entry in entries if entry.is_file()]
    except FileNotFoundError:
        raise DeadLetterError(f"{directory}: no such directory") from None
    except OSError as error:
        raise DeadLetterError(f"{directory}: cannot be read ({error.strerror})") from None
    return [directory / name for _, name in sorted(dated)]


def read_drop_file(path: Path) -> DropFile:
    """One request file; :class:`UnreadableFile` naming it if it is not one."""
    try:
        modified = path.stat().st_mtime
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: no such file") from None
    except OSError as error:
        raise UnreadableFile(f"{path}: cannot be read ({error.strerror})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UnreadableFile(f"{path}: not a zocalo.go request (invalid JSON: {error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("headers"), dict):
        raise UnreadableFile(f'{path}: not a zocalo.go request (no "headers" object)')
    if "message" not in data:
        raise UnreadableFile(f'{path}: not a zocalo.go request (no "message")')
    return DropFile(path, data["headers"], data["message"], modified)


@contextlib.contextmanager
def only_pickup(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock: two pickups would send each request twice."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise DeadLetterError(f"{directory}: cannot be opened ({error.strerror})") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeadLetterError(
                f"another zocalo.pickup is sending the requests in {directory}"
            ) from None
        yield
    finally:
        os.close(descriptor)


def send_all(
    transport: Transport,
    requests: Sequence[DropFile],
    *,
    delay: float = 0.0,
    timeout: float = 30.0,
    on_sent: Callable[[DropFile, int], None] | None = None,
    before_send: Callable[[DropFile], None] | None = None,
    stop_now: threading.Event | None = None,
) -> int:
    """Send each request to ``processing_recipe`` and delete its file once confirmed;
    ``delay`` seconds between them. Returns how many were sent. A refused send raises,
    naming the file (kept)."""
    stop_now = stop_now or threading.Event()
    sent = 0
    for request in requests:
        if stop_now.is_set():
            break
        if not request.path.exists():
            continue  # sent meanwhile by whoever removed it
        if before_send is not None:
            before_send(request)
        try:
            transport.send(
                PROCESSING_QUEUE,
                json.dumps(request.message),
                headers=request.headers,
                timeout=timeout,
            )
        except TimeoutError:
            raise DeadLetterError(
                f"{request.path}: the broker did not confirm it within {timeout:g} s; the file "
                "is kept (it may or may not have arrived)"
            ) from None
        except ZocaloError as error:
            raise DeadLetterError(f"{request.path}: not sent (the file is kept): {error}") from None
        request.path.unlink(missing_ok=True)
        sent += 1
        if on_sent is not None:
            on_sent(request, sent)
        if delay > 0:
            stop_now.wait(delay)
    return sent
