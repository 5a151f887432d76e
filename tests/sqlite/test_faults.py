"""The embedded broker under faults: lost wake-ups, a full disk, a dead worker thread."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from zocalo.errors import ConnectionFailed, PublishFailed
from zocalo.transport import Outgoing, create_transport
from zocalo.transport.base import Confirmation
from zocalo.transport.sqlite.operations import Bind


def test_a_wake_up_dropped_by_a_full_socket_is_not_lost(tmp_path, spawn):
    """30 wake-ups for ``a`` fill a stopped consumer's socket; the one for ``b`` is dropped.

    The reaper's re-poll is pushed out of reach (reap_interval=3600): the consumer
    must notice on its own that its socket was full.
    """
    url = f"sqlite:///{tmp_path}/broker.db?reap_interval=3600"
    consumer = spawn("consume", url, "a,b", "50")
    assert consumer.next_line() == "ready"
    with create_transport(url) as producer:
        _stop_outside_a_transaction(consumer, tmp_path / "broker.db.write-lock")
        try:
            for number in range(30):  # one transaction, so one wake-up, each
                producer.publish([Outgoing("a", f"a{number}".encode())]).result(10)
            producer.publish([Outgoing("b", b"b0")]).result(10)
            # A publisher wakes after confirming: one more batch makes sure b's wake-up is out.
            producer.publish([Outgoing("elsewhere", b"x")]).result(10)
        finally:
            consumer.signal_group(signal.SIGCONT)
        received = {consumer.next_line(timeout=15) for _ in range(31)}
    assert received == {f"a{n}" for n in range(30)} | {"b0"}


def test_a_message_whose_wake_up_never_came_is_found_by_the_reapers_batch(tmp_path, collector):
    """A publisher killed between its commit and its wake-ups leaves a row nobody was told of."""
    url = f"sqlite:///{tmp_path}/broker.db"
    with create_transport(url) as consumer:
        sink = collector(ack_with=consumer)
        consumer.subscribe("quiet", sink)
        db = sqlite3.connect(tmp_path / "broker.db", timeout=30)
        with db:  # the committed row, as the killed publisher left it
            db.execute(
                "INSERT INTO messages (queue, body, headers, available_at) VALUES (?, ?, ?, ?)",
                ("quiet", b"unannounced", json.dumps({}), time.time()),
            )
        db.close()
        (delivery,) = sink.wait_for_count(1, timeout=10)
    assert delivery.body == b"unannounced"


def test_acks_and_nacks_of_a_transaction_that_failed_on_a_full_disk_are_retried(tmp_path, spawn):
    """The consumer's writes fail (a file-size limit stands in for a full disk), then recover."""
    url = f"sqlite:///{tmp_path}/broker.db"
    database = tmp_path / "broker.db"
    with create_transport(url) as producer:
        for number in range(10):
            producer.send("work", f"m{number}")
        settler = spawn("settle_on_full", url, "work", "10")
        assert {settler.next_line() for _ in range(10)} == {f"holding m{n}" for n in range(10)}
        settler.tell("full")
        assert settler.next_line(timeout=30) == "failed"
        assert settler.next_line(timeout=30) == "publish refused"  # a publish fails visibly
        settler.tell("space")
        assert settler.next_line() == "space"
        # The nacked half comes back; the acked half is gone for good.
        again = {settler.next_line(timeout=15) for _ in range(5)}
        nacked = {f"m{n}" for n in range(5, 10)}
        assert again == {f"holding again {body}" for body in nacked}
        _wait_for(lambda: _bodies(database) == nacked)
        # Nothing else is waiting: the next message it gets is a sentinel sent now.
        producer.send("work", "sentinel")
        assert settler.next_line(timeout=15) == "holding sentinel"


def test_close_after_the_worker_thread_died_returns_what_it_held(tmp_path, collector):
    url = f"sqlite:///{tmp_path}/broker.db"
    with create_transport(url) as other:
        broken = create_transport(url)
        broken.connect()
        held = collector()  # never acks
        broken.subscribe("held", held)
        other.send("held", "m")
        held.wait_for_count(1)

        def injected_fault() -> list[str]:
            raise RuntimeError("injected fault in the broker worker")

        failures: list[str] = []
        broken.failure_listeners.append(failures.append)  # the runner listens so
        broken._worker._dead_connections = injected_fault  # the worker dies at its next reap
        deadline = time.monotonic() + 10
        while broken._worker.thread.is_alive():
            assert time.monotonic() < deadline, "the worker did not die"
            broken._worker.thread.join(0.1)
        assert not broken.connected
        assert len(failures) == 1 and "injected fault" in failures[0], "its owner is told"
        lock_file = broken._worker.liveness.path
        broken.close()
        assert not lock_file.exists()
        assert not broken._worker.callback_thread.is_alive()
        # Returned at close, not when its 60 s lease runs out.
        rescuer = collector(ack_with=other)
        other.subscribe("held", rescuer)
        (rescued,) = rescuer.wait_for_count(1, timeout=10)
    assert rescued.body == b"m" and rescued.redelivered


def test_a_publish_the_file_cannot_store_fails_alone_and_the_worker_goes_on(
    tmp_path, collector, monkeypatch
):
    """Not only TypeError and ValueError: whatever storing one message raises (here an
    OverflowError) fails that publish, naming it, and nothing else. (Every transport
    refuses such a delay up front; the check is skipped here to reach the worker's own
    defence, for what no check foresees.)"""
    with create_transport(f"sqlite:///{tmp_path}/broker.db") as transport:
        monkeypatch.setattr(transport, "check_supported", lambda message: None)
        transport.send("in", "input")
        received = collector()
        transport.subscribe("in", received)
        [delivery] = received.wait_for_count(1)
        unstorable = transport.publish([Outgoing("later", b"x", delay=10**400)], ack=delivery)
        fine = transport.publish([Outgoing("out", b"fine")])
        with pytest.raises(PublishFailed, match=r"queue 'later'.*too large") as failed:
            unstorable.result(10)
        assert "\n" not in str(failed.value)
        fine.result(10)
        transport.ack(delivery)  # still ours: the failed publish did not ack it
        out = collector(ack_with=transport)
        transport.subscribe("out", out)
        assert [d.body for d in out.wait_for_count(1)] == [b"fine"]
        assert transport.connected


def test_a_body_too_large_for_the_file_fails_its_publish_alone(tmp_path, collector):
    """SQLite stores no value over 10**9 bytes. Only the publish holding one fails,
    naming its queue; the other publishes committed with it in one batch go through."""
    with create_transport(f"sqlite:///{tmp_path}/broker.db") as transport:
        publishes: dict[str, Confirmation] = {}
        queued = threading.Event()

        def publish_both(_: object) -> None:  # on the worker thread: one batch next
            publishes["big"] = transport.publish([Outgoing("big", b"x" * (10**9 + 1))])
            publishes["small"] = transport.publish([Outgoing("out", b"fine")])
            queued.set()

        transport.publish([Outgoing("first", b"1")]).add_done_callback(publish_both)
        assert queued.wait(30)
        with pytest.raises(PublishFailed, match=r"queue 'big'.*too big") as failed:
            publishes["big"].result(30)
        assert "\n" not in str(failed.value)
        publishes["small"].result(30)
        out = collector(ack_with=transport)
        transport.subscribe("out", out)
        assert [d.body for d in out.wait_for_count(1)] == [b"fine"]


def test_close_from_a_confirmations_callback_closes_at_once(tmp_path, collector):
    """The callback runs on the worker thread: close() there returns at once and closes
    on a thread of its own (waiting there, the worker waited for itself: 30 s). A
    second close() waits for that one; the publish it confirmed stays done."""
    url = f"sqlite:///{tmp_path}/broker.db"
    transport = create_transport(url)
    transport.connect()
    try:
        transport.send("in", b"input")
        received = collector()
        transport.subscribe("in", received)
        [delivery] = received.wait_for_count(1)
        returned = threading.Event()

        def close_there(_: object) -> None:
            transport.close()
            returned.set()

        started = time.monotonic()
        publish = transport.publish([Outgoing("out", b"output")], ack=delivery)
        publish.add_done_callback(close_there)
        assert returned.wait(10), "close() in the callback did not return"
        transport.close()
        assert not transport.connected
        assert time.monotonic() - started < 10
    finally:
        transport.close()
    with create_transport(url) as other:
        depths = {stats.queue: stats.ready for stats in other.queue_stats()}
    assert depths == {"out": 1}, "the input acked, the output stored"


def test_the_batch_in_hand_when_the_worker_dies_is_failed_not_stranded(tmp_path):
    """Its confirmations fail at once; nobody waits out their timeout. (The transport
    refuses such a lifetime up front; the operation goes to the worker directly here,
    to kill it as a bug in an operation would.)"""
    with create_transport(f"sqlite:///{tmp_path}/broker.db") as transport:
        started = time.monotonic()
        done = Confirmation()
        transport._open_worker().submit(Bind("kept", "news", 10**400, done))  # kills the worker
        with pytest.raises(ConnectionFailed, match="broker worker failed"):
            done.result(30)
        assert time.monotonic() - started < 10
        assert not transport.connected


def _stop_outside_a_transaction(process, write_lock: Path) -> None:
    """SIGSTOP ``process`` (busy: it reads nothing for a while), but not holding the write lock.

    Stopped inside a transaction it would stall every publisher on the file.
    """
    fd = os.open(write_lock, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 10
        while True:
            process.signal_group(signal.SIGSTOP)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                process.signal_group(signal.SIGCONT)
                assert time.monotonic() < deadline, "it never let go of the write lock"
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
    finally:
        os.close(fd)


def _bodies(database: Path) -> set[str]:
    db = sqlite3.connect(database, timeout=30)
    try:
        return {bytes(body).decode() for (body,) in db.execute("SELECT body FROM messages")}
    finally:
        db.close()


def _wait_for(condition, timeout: float = 10.0) -> None:
    """Poll state that no event announces (rows in the broker file) until a deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        pause.wait(0.05)


def test_a_relative_broker_path_stays_put_when_the_service_changes_directory(tmp_path, monkeypatch):
    """A handler's os.chdir must not move its service to a new, empty broker file."""
    from zocalo.transport.sqlite.transport import broker_path

    monkeypatch.chdir(tmp_path)
    path = broker_path("sqlite://data/broker.db")
    monkeypatch.chdir("/")
    assert path == tmp_path / "data" / "broker.db"
