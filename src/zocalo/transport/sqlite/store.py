"""The broker file: schema, connection settings and the filesystem check.

Durability: WAL journal with ``synchronous=NORMAL`` by default. A committed
transaction is in the WAL before COMMIT returns, so it survives any process
being killed (SIGKILL, the OOM killer); only an OS crash or power loss can
lose the last transactions. ``?synchronous=full`` also fsyncs the WAL on
every commit, for brokers that must survive power loss, at a cost in
throughput.

Privacy: every message sits in these files, so they are the owner's alone:
the directories this module creates are 0700 and its files 0600 (SQLite gives
the ``-wal`` and ``-shm`` files the broker file's mode). ``?group=NAME`` shares
a broker with the members of one group instead: directories 2770 (new files
inherit the group), files 0660.

Message IDs: ``AUTOINCREMENT`` keeps a row id from ever being handed out twice
in the file's lifetime, so ``broker.db:42`` names one message in every log line
and dead letter. Files made before that are migrated when first opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from zocalo.errors import ConnectionFailed

MESSAGES_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    expires_at REAL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    history TEXT,
    owner TEXT,
    lease_until REAL
)
"""

SCHEMA = """
CREATE INDEX IF NOT EXISTS messages_ready
    ON messages (queue, priority DESC, id) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS messages_owned ON messages (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS bindings (
    queue TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    kept_until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    broadcast INTEGER NOT NULL,
    wake TEXT NOT NULL,
    lock_path TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS consumers_queue ON consumers (queue);
CREATE TABLE IF NOT EXISTS known_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""

SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")

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


def open_store(
    path: Path,
    lock_fd: int,
    synchronous: str = "normal",
    timeout: float = 30.0,
    permissions: Permissions = PRIVATE,
) -> sqlite3.Connection:
    """A connection to the broker file, creating it and its schema if needed.

    Creation, the switch to WAL and the schema run under the write flock
    (``lock_fd``): processes opening a new file at once would otherwise meet
    SQLite's locks where its busy handler does not wait ("database is locked").
    """
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ConnectionFailed(
            f"synchronous={synchronous!r} is not one of {', '.join(SYNCHRONOUS_LEVELS)}"
        )
    check_local(path)
    try:
        with write_locked(lock_fd):
            permissions.create_file(path)
            db = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                db.execute("PRAGMA journal_size_limit=67108864")
                _create_schema(db)
            except BaseException:
                db.close()
                raise
    except (sqlite3.Error, OSError) as error:
        raise ConnectionFailed(f"cannot open broker file {path}: {error}") from None
    return db


def _schema_names() -> set[str]:
    """Every table and index :data:`SCHEMA` creates."""
    return set(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA))


def _has_schema(db: sqlite3.Connection) -> bool:
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    return _schema_names() <= present


def _create_schema(db: sqlite3.Connection) -> None:
    """Tables and indexes; a ``messages`` table without AUTOINCREMENT is rebuilt with it."""
    row = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
    ).fetchone()
    existing = row[0] if row else None
    if existing is not None and "AUTOINCREMENT" in existing.upper() and _has_schema(db):
        return  # opening a current file writes nothing: a busy writer does not stall it
    db.execute("BEGIN IMMEDIATE")
    try:
        if existing is None:
            db.execute(MESSAGES_TABLE.format(name="messages"))
        elif "AUTOINCREMENT" not in existing.upper():
            db.execute(MESSAGES_TABLE.format(name="messages_unique_ids"))
            db.execute("INSERT INTO messages_unique_ids SELECT * FROM messages")
            db.execute("DROP TABLE messages")
            db.execute("ALTER TABLE messages_unique_ids RENAME TO messages")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT OR IGNORE INTO known_queues SELECT DISTINCT queue FROM consumers "
            "WHERE broadcast = 0"
        )
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
