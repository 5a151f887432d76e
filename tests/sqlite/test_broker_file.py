"""The broker file itself: who may read it, opening it at once, replacing it, message IDs."""

from __future__ import annotations

import fcntl
import grp
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from zocalo.errors import ConnectionFailed
from zocalo.transport import create_transport

NOBODY = 65534
#: Root without the capabilities that let it ignore file permissions: it meets
#: another user's files as any user would.
AS_AN_ORDINARY_USER = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_is_private_to_its_owner(tmp_path):
    broker = tmp_path / "made" / "here" / "broker.db"
    with create_transport(f"sqlite:///{broker}") as transport:
        transport.send("q", "secret")
        files = [
            broker,
            broker.with_name("broker.db-wal"),
            broker.with_name("broker.db-shm"),
            broker.with_name("broker.db.write-lock"),
            transport._worker.liveness.path,
        ]
        modes = {path.name: oct(_mode(path)) for path in files}
        directories = {
            path.name: oct(_mode(path)) for path in (broker.parent, broker.parent.parent)
        }
        directories[transport.locks_directory.name] = oct(_mode(transport.locks_directory))
    assert set(modes.values()) == {"0o600"}, modes
    assert set(directories.values()) == {"0o700"}, directories


def test_queue_stats_before_connecting_create_no_file_and_fail_in_one_line(tmp_path):
    """They read the file read-only: no empty file of the umask's mode (0644) is left
    behind for the services to open and keep their messages in."""
    previous = os.umask(0o022)
    broker = tmp_path / "broker.db"
    try:
        with pytest.raises(ConnectionFailed, match="cannot read broker file") as refused:
            create_transport(f"sqlite:///{broker}").queue_stats()
    finally:
        os.umask(previous)
    assert "\n" not in str(refused.value)
    assert not broker.exists()
    with create_transport(f"sqlite:///{broker}") as transport:
        transport.send("q", "secret")
        assert [stats.ready for stats in create_transport(transport.url).queue_stats()] == [1]
    assert _mode(broker) == 0o600


def test_a_locks_directory_it_may_not_write_is_refused_in_one_line(tmp_path, spawn):
    """Where each connection's liveness lock goes: a traceback, not a line, before."""
    if os.geteuid() != 0:
        pytest.skip("root without its capabilities stands for another user here")
    (tmp_path / "broker").mkdir(mode=0o700)
    with create_transport(f"sqlite:///{tmp_path}/broker/broker.db") as transport:
        transport.send("q", "kept")
        locks = transport.locks_directory
    locks.chmod(0o500)
    opener = spawn("open_many", str(tmp_path), wrapper=AS_AN_ORDINARY_USER)
    opener.tell("broker")
    line = opener.next_line()
    assert line.startswith("error: cannot open broker file") and "Permission denied" in line
    assert not opener.errors, "nothing more than the line"


def test_a_shared_group_gets_group_read_write(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    broker = tmp_path / "shared" / "broker.db"
    with create_transport(f"sqlite:///{broker}?group={group}") as transport:
        transport.send("q", "shared")
        files = [broker, broker.with_name("broker.db-wal"), transport._worker.liveness.path]
        assert {_mode(path) for path in files} == {0o660}
        assert _mode(broker.parent) == 0o2770
        assert _mode(transport.locks_directory) == 0o2770
        assert {path.stat().st_gid for path in files} == {os.getgid()}


def test_a_lock_file_of_another_user_does_not_stop_the_reaper(tmp_path, spawn):
    if os.geteuid() != 0:
        pytest.skip("making a file of another user takes root")
    url = f"sqlite:///{tmp_path}/broker.db"
    consumer = spawn("consume", url, "work", "5", wrapper=AS_AN_ORDINARY_USER)
    assert consumer.next_line() == "ready"
    # A living connection of another user, whose lock file this one may not open.
    ghost = "otherhost.4242.0123456789ab"
    lock = tmp_path / "broker.db.locks" / f"{ghost}.lock"
    lock.touch(mode=0o600)
    os.chown(lock, NOBODY, NOBODY)
    held = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        db = sqlite3.connect(tmp_path / "broker.db", timeout=30)
        with db:
            db.execute(
                "INSERT INTO consumers VALUES (?, 'theirs', 0, 'nowhere', ?, 4242, ?)",
                (f"{ghost}.1", str(lock), time.time()),
            )
        db.close()
        consumer.wait_for_stderr("cannot tell whether the connection holding")
        with create_transport(url) as producer:
            producer.send("work", "after")
            assert consumer.next_line() == "after"
    finally:
        os.close(held)


class _Spot(logging.Handler):
    """Sets ``seen`` when a record containing ``words`` is logged."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.seen.set()


def test_wake_ups_from_another_user_are_ignored(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("sending as another user takes root")
    refused = _Spot("ignoring broker wake-ups from process")
    logger = logging.getLogger("zocalo.transport.sqlite")
    logger.addHandler(refused)
    try:
        with create_transport(f"sqlite:///{tmp_path}/broker.db") as transport:
            address = "\0" + transport._worker.wake_socket.address
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            pid = os.fork()
            if pid == 0:  # the child: become nobody, wake it, vanish
                try:
                    os.setresgid(NOBODY, NOBODY, NOBODY)
                    os.setresuid(NOBODY, NOBODY, NOBODY)
                    sender.sendto(b"work", address)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            sender.close()
            assert refused.seen.wait(10), "the wake-up of another user was heard"
    finally:
        logger.removeHandler(refused)


def test_processes_opening_a_new_broker_file_at_once_all_succeed(tmp_path, spawn):
    racers = [spawn("open_many", str(tmp_path)) for _ in range(4)]
    failures = []
    for name in range(40):
        for racer in racers:
            racer.tell(f"broker{name}")
        for racer in racers:
            if (line := racer.next_line(timeout=30)) != "ok":
                failures.append(line)
    assert failures == []


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_broker_file_deleted_or_replaced_under_a_consumer_is_reopened(
    tmp_path, how, caplog, collector
):
    url = f"sqlite:///{tmp_path}/broker.db"
    broker = tmp_path / "broker.db"
    with create_transport(url) as consumer:
        sink = collector(ack_with=consumer)
        consumer.subscribe("work", sink)
        consumer.send("work", "before")
        sink.wait_for_body(b"before")
        for suffix in ("-wal", "-shm"):
            broker.with_name(broker.name + suffix).unlink()
        if how == "deleted":
            broker.unlink()
        else:
            with create_transport(f"sqlite:///{tmp_path}/other.db"):
                pass
            os.replace(tmp_path / "other.db", broker)
        with create_transport(url) as producer:
            producer.send("work", "after")
            sink.wait_for_body(b"after")
    assert "broker.db was deleted" in caplog.text
    assert "while this connection used it; reopening" in caplog.text


def test_message_ids_are_never_reused(tmp_path, collector):
    with create_transport(f"sqlite:///{tmp_path}/broker.db") as transport:
        sink = collector(ack_with=transport)
        transport.subscribe("q", sink)
        for number in range(3):  # each acked (deleted) before the next is sent
            transport.send("q", f"m{number}")
            sink.wait_for_count(number + 1)
    ids = [delivery.message_id for delivery in sink.deliveries]
    assert len(set(ids)) == 3, ids


def test_a_broker_file_from_before_unique_ids_is_migrated(tmp_path, collector):
    broker = tmp_path / "broker.db"
    db = sqlite3.connect(broker)
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, body BLOB NOT NULL, "
        "headers TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, available_at REAL NOT NULL, "
        "expires_at REAL, delivery_count INTEGER NOT NULL DEFAULT 0, history TEXT, owner TEXT, "
        "lease_until REAL)"
    )
    with db:
        db.execute(
            "INSERT INTO messages (id, queue, body, headers, available_at) "
            "VALUES (7, 'q', x'6f6c64', '{}', 0)"
        )
    db.close()
    with create_transport(f"sqlite:///{broker}") as transport:
        sink = collector(ack_with=transport)
        transport.subscribe("q", sink)
        (old,) = sink.wait_for_count(1)
        transport.send("q", "new")
        sink.wait_for_count(2)
    assert old.body == b"old" and old.message_id == "broker.db:7"
    assert sink.deliveries[1].message_id == "broker.db:8"


def test_a_second_connection_in_one_process_keeps_the_first_ones_locks(
    sqlite_url, spawn, collector
):
    """SQLite's locks are per process: closing any descriptor of the file drops them all.

    Had opening the second connection done so, the other process, closing last as it
    would then believe, would checkpoint and delete the WAL under the first.
    """
    with create_transport(sqlite_url) as first:
        sink = collector(ack_with=first)
        first.subscribe("q", sink)
        with create_transport(sqlite_url):
            pass
        other = spawn("produce", sqlite_url, "q", "other", "1")
        assert other.next_line() == "produced"
        assert other.popen.wait(10) == 0
        assert first.path.with_name("broker.db-wal").exists(), "the WAL was deleted under it"
        first.send("q", "after")
        sink.wait_for_body(b"after")
        sink.wait_for_body(b"other-0")
