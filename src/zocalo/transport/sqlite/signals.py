"""How processes sharing a broker file tell each other things, without polling.

Wake-ups: each connection binds a Unix datagram socket in the abstract
namespace (Linux: no file to clean up, gone when the process dies). A
publisher, after its commit, sends each consumer of the queues it wrote one
datagram carrying the queue name (:class:`WakeUps` collects them during the
transaction); the consumer's worker sleeps in ``select()`` until one arrives,
its own process wakes it (:class:`WorkerWake`: an operation was submitted),
or its next timer (a delayed message, a lease) is due.

Any local user can send to an abstract address, so each datagram carries its
sender's credentials (``SO_PASSCRED``) and only the broker's own user (or
its shared group, and root) is heard. A socket holds only
``net.unix.max_dgram_qlen`` datagrams and a full one drops the rest: a drain
that found it that full reports that wake-ups may be lost, and the consumer
then looks at every queue it reads (the reaper's batch does the same now and
then, for wake-ups lost in any other way).

Liveness: each connection holds an exclusive ``flock`` on its own lock file.
The kernel drops it when the process dies however it dies, so a failed
non-blocking lock means "alive" and a successful one means "dead".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from zocalo.transport.sqlite.files import PRIVATE, Permissions

log = logging.getLogger(__name__)

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_CREDENTIALS.size)


def _queue_length_limit() -> int:
    """Datagrams a Unix socket holds before the kernel refuses more."""
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        return 10


class WakeSocket:
    """The receiving end: one per connection."""

    def __init__(
        self, broker_path: Path, connection_id: str, permissions: Permissions = PRIVATE
    ) -> None:
        digest = hashlib.sha1(str(broker_path.resolve()).encode()).hexdigest()[:16]
        self.address = f"zocalo/{digest}/{connection_id}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.socket.bind("\0" + self.address)
        self.socket.setblocking(False)
        self._full = _queue_length_limit()
        self._group = permissions.group
        self._heard: dict[int, bool] = {os.geteuid(): True, 0: True}

    def fileno(self) -> int:
        return self.socket.fileno()

    def drain(self) -> tuple[set[str], bool]:
        """Queue names woken since the last drain, and whether some may have been dropped."""
        names: set[str] = set()
        received = 0
        while True:
            try:
                data, ancillary, _, _ = self.socket.recvmsg(4096, _CREDENTIALS_SPACE)
            except (BlockingIOError, InterruptedError):
                return names, received >= self._full
            received += 1
            if self._trusted(ancillary):
                names.add(data.decode("utf-8", "replace"))

    def _trusted(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        """True if the sender is this broker's user, its shared group, or root."""
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, gid = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
                trusted = self._heard.get(uid)
                if trusted is None:
                    trusted = self._heard[uid] = self._group is not None and (
                        gid == self._group or _in_group(uid, self._group)
                    )
                    if not trusted:
                        log.warning(
                            "ignoring broker wake-ups from process %d of user %d, who does "
                            "not share this broker file",
                            pid,
                            uid,
                        )
                return trusted
        return False

    def close(self) -> None:
        self.socket.close()


class WakeSender:
    """The sending end, shared by all publishes of one connection."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setblocking(False)

    def wake(self, address: str, queue: str) -> bool:
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


class WakeUps:
    """The wake-ups one transaction owes, sent once it has committed.

    ``addresses_of(queue)`` names the sockets of a queue's consumers; it is asked
    once per queue per transaction, however many messages the queue got.
    """

    def __init__(self, addresses_of: Callable[[str], list[str]]) -> None:
        self._addresses_of = addresses_of
        self._addresses: dict[str, list[str]] = {}
        self.targets: set[tuple[str, str]] = set()

    def add(self, address: str, queue: str) -> None:
        """Wake the socket at ``address`` about ``queue``."""
        self.targets.add((address, queue))

    def consumers_of(self, queue: str) -> None:
        """Wake every consumer of ``queue``."""
        addresses = self._addresses.get(queue)
        if addresses is None:
            addresses = self._addresses[queue] = self._addresses_of(queue)
        self.targets.update((address, queue) for address in addresses)

    def send(self, sender: WakeSender) -> None:
        for address, queue in self.targets:
            sender.wake(address, queue)


class WorkerWake:
    """Wakes a connection's worker thread from the other threads of its process.

    One pending byte is enough however many operations wait: :meth:`wake` writes
    only if the worker has not been woken since it last looked.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._pending = False

    def fileno(self) -> int:
        return self._read.fileno()

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        with contextlib.suppress(OSError):
            self._write.send(b"w")

    def clear(self) -> None:
        """Take the pending byte(s): call before draining the operations.

        A ``wake`` that saw one pending has its operation drained after this; any
        later ``wake`` sends a byte of its own.
        """
        with contextlib.suppress(BlockingIOError):
            while self._read.recv(4096):
                pass
        self._pending = False

    def close(self) -> None:
        self._read.close()
        self._write.close()


def _in_group(uid: int, gid: int) -> bool:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


class LivenessLock:
    """An exclusive flock held for the life of one connection."""

    def __init__(
        self, directory: Path, connection_id: str, permissions: Permissions = PRIVATE
    ) -> None:
        permissions.make_directories(directory)
        self.path = directory / f"{connection_id}.lock"
        self._fd: int | None = permissions.open_file(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self, remove: bool = True) -> None:
        if self._fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None


_unreadable: set[str] = set()


def holder_is_dead(lock_path: str) -> bool:
    """True if nobody holds the flock on ``lock_path`` (its owner has died).

    A lock file this process may not open (another user's) cannot be judged:
    its holder counts as alive, and its leases still run out.
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError as error:
        if lock_path not in _unreadable:
            _unreadable.add(lock_path)
            log.warning(
                "cannot tell whether the connection holding %s is alive (%s); its "
                "messages return to their queue when its lease runs out",
                lock_path,
                error.strerror or error,
            )
        return False
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
