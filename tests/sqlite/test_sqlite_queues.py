"""What the embedded broker says about its queues: stats for `zocalo queues`, unknown queues."""

from __future__ import annotations

import logging
import signal

from zocalo.transport import create_transport
from zocalo.transport.base import QueueStats

NEVER_READ = "no consumer has ever read queue"


def test_a_send_to_a_queue_no_consumer_ever_read_warns_once(sqlite_url, caplog):
    with caplog.at_level(logging.WARNING), create_transport(sqlite_url) as sender:
        sender.send("mistyped", "1")
        sender.send("mistyped", "2")
    warnings = [r.getMessage() for r in caplog.records if NEVER_READ in r.getMessage()]
    assert len(warnings) == 1
    assert "queue mistyped on broker file" in warnings[0]


def test_a_queue_consumed_once_on_this_file_is_known_for_good(sqlite_url, caplog, collector):
    with create_transport(sqlite_url) as earlier:
        earlier.unsubscribe(earlier.subscribe("known", collector()))
    with caplog.at_level(logging.WARNING), create_transport(sqlite_url) as sender:
        sender.send("known", "1")
        sender.send("unknown", "2")
    warned = [r.getMessage() for r in caplog.records if NEVER_READ in r.getMessage()]
    assert len(warned) == 1 and "queue unknown " in warned[0]


def test_queue_stats_list_a_queue_with_consumers_and_no_messages(sqlite_url, collector):
    with create_transport(sqlite_url) as transport:
        transport.subscribe("idle", collector())
        transport.send("busy", "x")
        stats = transport.queue_stats()
    assert stats == [QueueStats("busy", ready=1), QueueStats("idle", consumers=1)]


def test_queue_stats_count_what_a_dead_consumer_held_as_ready(tmp_path, spawn):
    # A long-lived monitor whose own reaper would not run again for an hour.
    url = f"sqlite:///{tmp_path}/broker.db?reap_interval=3600"
    with create_transport(url) as monitor:
        for number in range(3):
            monitor.send("work", f"m{number}")
        holder = spawn("hold", url, "work", "3")
        for _ in range(3):
            holder.next_line()
        assert monitor.queue_stats() == [QueueStats("work", in_flight=3, consumers=1)]
        holder.signal_group(signal.SIGKILL)
        holder.popen.wait(10)
        assert monitor.queue_stats() == [QueueStats("work", ready=3)]
