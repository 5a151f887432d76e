"""The broker file: schema, connection settings and the filesystem check.

Durability: WAL journal with ``synchronous=NORMAL`` by default. A committed
transaction is in the WAL before COMMIT returns, so it survives any process
being killed (SIGKILL, the OOM killer); only an OS crash or power loss can
lose the last transactions. ``?synchronous=full`` also fsyncs the WAL on
every commit, for brokers that must survive power loss, at a cost in
throughput.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from zocalo.errors import ConnectionFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
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
);
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


def open_store(
    path: Path, synchronous: str = "normal", timeout: float = 30.0
) -> sqlite3.Connection:
    """A connection to the broker file, creating it and its schema if needed."""
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ConnectionFailed(
            f"synchronous={synchronous!r} is not one of {', '.join(SYNCHRONOUS_LEVELS)}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConnectionFailed(
            f"cannot create the directory of broker file {path}: {error}"
        ) from None
    check_local(path)
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("PRAGMA journal_size_limit=67108864")
        db.executescript(SCHEMA)
    except sqlite3.Error as error:
        raise ConnectionFailed(f"cannot open broker file {path}: {error}") from None
    return db
