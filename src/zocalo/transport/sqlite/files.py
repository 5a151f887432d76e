"""The broker's files on disk: who may open them, where they may live, the write flock.

Privacy: every message sits in these files, so they are the owner's alone:
the directories this module creates are 0700 and its files 0600 (SQLite gives
the ``-wal`` and ``-shm`` files the broker file's mode). ``?group=NAME`` shares
a broker with the members of one group instead: directories 2770 (new files
inherit the group), files 0660.

Locality: SQLite's WAL needs shared memory and POSIX locks that network
filesystems do not give reliably, so a broker file there is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
from dataclasses import dataclass
from pathlib import Path

from zocalo.errors import ConnectionFailed

#: Filesystems whose locking breaks SQLite's WAL (shared memory and POSIX locks).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "gpfs",
        "lustre",
        "ceph",
        "fuse.sshfs",
        "glusterfs",
        "fuse.glusterfs",
        "beegfs",
        "afs",
        "9p",
    }
)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest matching mount point)."""
    target = str(path.resolve())
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, fields[2]
    return fstype


def check_local(path: Path) -> None:
    """Refuse a broker file on a network filesystem, where WAL locking is unsafe."""
    fstype = filesystem_type(path.parent)
    if fstype in NETWORK_FILESYSTEMS:
        raise ConnectionFailed(
            f"broker file {path} is on a {fstype} network filesystem; SQLite's WAL locking "
            "is not safe there. Put it on a local disk (or use a RabbitMQ broker)."
        )


@dataclass(frozen=True)
class Permissions:
    """Who may open the broker's files: the owner alone, or one shared group."""

    group: int | None = None

    @classmethod
    def for_group(cls, name: str | None) -> Permissions:
        if not name:
            return cls()
        try:
            return cls(int(name) if name.isdigit() else grp.getgrnam(name).gr_gid)
        except KeyError:
            raise ConnectionFailed(f"group={name!r}: no such group") from None

    @property
    def directory_mode(self) -> int:
        return 0o700 if self.group is None else 0o2770

    @property
    def file_mode(self) -> int:
        return 0o600 if self.group is None else 0o660

    def make_directories(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents with the private (or group) mode."""
        missing = []
        while not directory.exists():
            missing.append(directory)
            if directory.parent == directory:
                break
            directory = directory.parent
        for created in reversed(missing):
            with contextlib.suppress(FileExistsError):
                created.mkdir(mode=self.directory_mode & 0o777)  # never wider, even briefly
                self._restrict(created, self.directory_mode)

    def open_file(self, path: Path) -> int:
        """A read-write descriptor on ``path``, created with the private (or group) mode."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, self.file_mode)
        except FileExistsError:
            return os.open(path, os.O_RDWR)
        try:
            self._restrict(fd, self.file_mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create_file(self, path: Path) -> None:
        """Create ``path`` empty with the private (or group) mode, unless it exists.

        An existing file is never opened: closing any descriptor of a file SQLite
        has open in this process would drop that connection's POSIX locks.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        except FileExistsError:
            return
        try:
            self._restrict(fd, self.file_mode)
        finally:
            os.close(fd)

    def _restrict(self, target: Path | int, mode: int) -> None:
        """Apply the mode past the umask, and the shared group."""
        if self.group is not None:
            os.chown(target, -1, self.group)
        os.chmod(target, mode)


#: The default: the owner alone.
PRIVATE = Permissions()


@contextlib.contextmanager
def write_locked(lock_fd: int):
    """Hold the broker's write flock: the one lock every writer of the file queues on."""
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None if it is gone: tells a replaced file apart."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def locks_directory(broker: Path) -> Path:
    """Where the connections to ``broker`` keep their liveness locks."""
    return broker.with_name(broker.name + ".locks")


def write_lock_path(broker: Path) -> Path:
    """The file whose flock every writer of ``broker`` queues on."""
    return broker.with_name(broker.name + ".write-lock")
