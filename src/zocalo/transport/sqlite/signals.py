"""How processes sharing a broker file tell each other things, without polling.

Wake-ups: each connection binds a Unix datagram socket in the abstract
namespace (Linux: no file to clean up, gone when the process dies). A
publisher, after its commit, sends each consumer of the queues it wrote one
datagram carrying the queue name; the consumer sleeps in ``select()`` until
one arrives or its next timer (a delayed message, a lease) is due.

Liveness: each connection holds an exclusive ``flock`` on its own lock file.
The kernel drops it when the process dies however it dies, so a failed
non-blocking lock means "alive" and a successful one means "dead".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from pathlib import Path


class WakeSocket:
    """The receiving end: one per connection."""

    def __init__(self, broker_path: Path, connection_id: str) -> None:
        digest = hashlib.sha1(str(broker_path.resolve()).encode()).hexdigest()[:16]
        self.address = f"zocalo/{digest}/{connection_id}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.address)
        self.socket.setblocking(False)

    def fileno(self) -> int:
        return self.socket.fileno()

    def drain(self) -> set[str]:
        """Every queue name poked since the last drain."""
        names: set[str] = set()
        while True:
            try:
                names.add(self.socket.recv(4096).decode("utf-8", "replace"))
            except (BlockingIOError, InterruptedError):
                return names

    def close(self) -> None:
        self.socket.close()


class WakeSender:
    """The sending end, shared by all publishes of one connection."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setblocking(False)

    def poke(self, address: str, queue: str) -> bool:
        """Wake ``address`` about ``queue``; False if nobody listens there any more."""
        try:
            self.socket.sendto(queue.encode("utf-8"), "\0" + address)
        except (BlockingIOError, InterruptedError):
            return True  # its buffer is full: it has wake-ups waiting anyway
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        return True

    def close(self) -> None:
        self.socket.close()


class LivenessLock:
    """An exclusive flock held for the life of one connection."""

    def __init__(self, directory: Path, connection_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{connection_id}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self, remove: bool = True) -> None:
        if self._fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None


def holder_is_dead(lock_path: str) -> bool:
    """True if nobody holds the flock on ``lock_path`` (its owner has died)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        return True
    finally:
        os.close(fd)
