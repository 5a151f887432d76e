"""The embedded broker across real processes: kill -9, many processes, durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from zocalo.errors import ConnectionFailed, InvalidURL
from zocalo.transport import Outgoing, create_transport
from zocalo.transport.sqlite import files, schema


def test_consumer_killed_inside_its_handler_gets_all_prefetched_messages_redelivered(
    sqlite_url, spawn, collector
):
    with create_transport(sqlite_url) as producer:
        for number in range(5):
            producer.send("work", f"m{number}")
        holder = spawn("hold", sqlite_url, "work", "5")
        held = {holder.next_line() for _ in range(5)}
        assert held == {f"holding m{n}" for n in range(5)}
        killed_at = time.monotonic()
        holder.signal_group(signal.SIGKILL)
        holder.popen.wait(10)

        survivor = collector(ack_with=producer)
        producer.subscribe("work", survivor, prefetch=10)
        deliveries = survivor.wait_for_count(5, timeout=20)
        redelivery = time.monotonic() - killed_at
        print(f"\nredelivery after kill -9: {redelivery * 1000:.0f} ms")
        assert sorted(d.body for d in deliveries) == [f"m{n}".encode() for n in range(5)]
        assert all(d.redelivered and d.delivery_count == 2 for d in deliveries)


@pytest.mark.slow
def test_four_producers_four_consumers_each_message_exactly_once(sqlite_url, spawn):
    per_producer = 5000
    consumers = [spawn("consume", sqlite_url, "stream", "20") for _ in range(4)]
    for consumer in consumers:
        assert consumer.next_line() == "ready"
    producers = [
        spawn("produce", sqlite_url, "stream", f"p{k}", str(per_producer)) for k in range(4)
    ]
    for producer in producers:
        assert producer.next_line(timeout=120) == "produced"
        assert producer.popen.wait(30) == 0

    received: list[str] = []
    done = threading.Condition()

    def gather(process) -> None:
        while (line := process.lines.get()) is not None:
            if line in ("ready", "closed"):
                continue
            with done:
                received.append(line)
                done.notify_all()

    for consumer in consumers:
        threading.Thread(target=gather, args=(consumer,), daemon=True).start()
    with done:
        assert done.wait_for(lambda: len(received) >= 4 * per_producer, timeout=120), (
            f"only {len(received)} of {4 * per_producer} received"
        )
    for consumer in consumers:
        consumer.signal_group(signal.SIGTERM)
    for consumer in consumers:
        assert consumer.popen.wait(30) == 0
    expected = {f"p{k}-{n}" for k in range(4) for n in range(per_producer)}
    assert len(received) == len(expected), "each message delivered exactly once"
    assert set(received) == expected
    share = [sum(1 for line in c.all_lines if line.startswith("p")) for c in consumers]
    assert all(count > 0 for count in share), f"every consumer took work: {share}"


def test_broker_file_survives_every_process_being_killed(sqlite_url, spawn, collector):
    producer = spawn("produce", sqlite_url, "durable", "d", "500")
    assert producer.next_line(timeout=60) == "produced"
    holder = spawn("hold", sqlite_url, "durable", "7")
    for _ in range(7):
        holder.next_line()
    for process in (producer, holder):
        process.signal_group(signal.SIGKILL)
        process.popen.wait(10)
    with create_transport(sqlite_url) as reader:
        sink = collector(ack_with=reader)
        reader.subscribe("durable", sink, prefetch=100)
        deliveries = sink.wait_for_count(500, timeout=30)
    assert {d.body for d in deliveries} == {f"d-{n}".encode() for n in range(500)}
    assert sum(d.redelivered for d in deliveries) == 7


def test_dead_processes_broadcast_subscriptions_are_reaped(sqlite_url, spawn, tmp_path):
    holder = spawn("hold", sqlite_url, "anything", "1")
    with create_transport(sqlite_url) as watcher:
        watcher.send("anything", "x")
        holder.next_line()
        database = tmp_path / "broker.db"
        assert _count(database, "SELECT COUNT(*) FROM consumers WHERE broadcast = 1") == 1
        holder.signal_group(signal.SIGKILL)
        holder.popen.wait(10)
        _wait_for(lambda: _count(database, "SELECT COUNT(*) FROM consumers") == 0)
        _wait_for(
            lambda: _count(database, "SELECT COUNT(*) FROM messages WHERE owner IS NOT NULL") == 0
        )


def test_acked_messages_are_pruned(sqlite_url, tmp_path, collector):
    with create_transport(sqlite_url) as transport:
        sink = collector(ack_with=transport)
        transport.subscribe("prune", sink, prefetch=50)
        for number in range(200):
            transport.publish([Outgoing("prune", b"%d" % number)])
        transport.send("prune", b"last")
        sink.wait_for_body(b"last")
        transport.send("other", b"marker")  # a round trip after the last ack
    assert _count(tmp_path / "broker.db", "SELECT COUNT(*) FROM messages") == 1


def test_durability_level_is_chosen_in_the_url(tmp_path):
    url = f"sqlite:///{tmp_path}/full.db?synchronous=full"
    with create_transport(url):
        pass
    lock = os.open(tmp_path / "full.db.write-lock", os.O_RDWR)
    db = schema.open_database(tmp_path / "full.db", lock, "full")
    os.close(lock)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(InvalidURL, match="synchronous='sometimes'"):
        create_transport(f"sqlite:///{tmp_path}/x.db?synchronous=sometimes")


def test_a_network_filesystem_is_refused(tmp_path, monkeypatch):
    # No NFS mount exists on a test machine; pretend the directory is one.
    monkeypatch.setattr(files, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(ConnectionFailed, match="nfs4 network filesystem"):
        create_transport(f"sqlite:///{tmp_path}/b.db").connect()


def test_filesystem_type_reads_the_mount_table(tmp_path):
    assert files.filesystem_type(Path("/proc")) == "proc"
    assert files.filesystem_type(tmp_path) not in files.NETWORK_FILESYSTEMS


def _count(database: Path, sql: str) -> int:
    db = sqlite3.connect(database, timeout=30)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def _wait_for(condition, timeout: float = 10.0) -> None:
    """Poll state that no event announces (rows in the broker file) until a deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        pause.wait(0.05)


def test_a_hung_consumer_loses_its_lease_and_a_live_one_keeps_it(
    tmp_path, spawn, collector, let_time_pass
):
    """Time leases are the backstop for consumers that are alive but stuck."""
    url = f"sqlite:///{tmp_path}/broker.db?visibility_timeout=1"
    with create_transport(url) as producer:
        producer.send("stuck", "s")
        producer.send("alive", "a")
        hung = spawn("hold", url, "stuck", "1")
        assert hung.next_line() == "holding s"
        living = spawn("hold", url, "alive", "1")
        assert living.next_line() == "holding a"
        hung.signal_group(signal.SIGSTOP)  # alive (its flock held) but frozen
        try:
            rescuer = collector(ack_with=producer)
            producer.subscribe("stuck", rescuer)
            (rescued,) = rescuer.wait_for_count(1, timeout=15)
            assert rescued.body == b"s" and rescued.redelivered
            # The living holder renews its lease (every third of it): after three
            # lease periods its message is still its own.
            let_time_pass(3)
            owner = _count(
                tmp_path / "broker.db",
                "SELECT COUNT(*) FROM messages WHERE queue = 'alive' AND owner "
                "IS NOT NULL AND lease_until > strftime('%s','now')",
            )
            assert owner == 1
        finally:
            hung.signal_group(signal.SIGCONT)


@pytest.mark.parametrize("requeue", [True, False], ids=["requeue", "dead-letter"])
def test_a_stale_holders_nack_leaves_the_row_to_its_new_owner(tmp_path, collector, caplog, requeue):
    """A consumer frozen past its lease loses the row to another; its late nack must
    neither requeue nor dead-letter what the other consumer now holds (as a late ack
    deletes nothing)."""
    url = f"sqlite:///{tmp_path}/broker.db?reap_interval=3600"
    database = tmp_path / "broker.db"
    with create_transport(url) as stale, create_transport(url) as new_owner:
        stale.send("work", "m")
        received = collector()
        stale.subscribe("work", received, prefetch=1)
        [delivery] = received.wait_for_count(1)
        # Behind the stale holder's back: its lease was reaped, the other claimed the row.
        claimer = new_owner._worker.connection_id  # type: ignore[attr-defined]
        db = sqlite3.connect(database, timeout=30)
        try:
            with db:
                db.execute(
                    "UPDATE messages SET owner = ?, delivery_count = 2 WHERE queue = 'work'",
                    (claimer,),
                )
        finally:
            db.close()

        stale.nack(delivery, requeue=requeue, reason="handler failed")
        stale.publish([Outgoing("elsewhere", b"after the nack")]).result(10)  # applied

        held = f"SELECT COUNT(*) FROM messages WHERE queue = 'work' AND owner = '{claimer}' "
        assert _count(database, held + "AND delivery_count = 2 AND history IS NULL") == 1
        assert _count(database, "SELECT COUNT(*) FROM messages WHERE queue LIKE '%dlq%'") == 0
    assert any(
        "nack of" in r.getMessage() and "came too late" in r.getMessage() for r in caplog.records
    )
