"""The database goes away mid-stream and comes back: nothing lost, nothing written twice.

The writer runs as a real ``zocalo.service`` process on the SQLite broker and on
RabbitMQ; its database is a private PostgreSQL (stopped cleanly, as for
maintenance) or MariaDB (killed with -9, as in a crash). Each run prints its
figures as one JSON line (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from join_jobs import JOINED, join_recipe, parts, payload_of
from sqlalchemy import create_engine, text
from writer_jobs import PER_IMAGE, WRITTEN, create_results_table, writes

from zocalo.service.status import STATUS_TOPIC
from zocalo.services.join import Join
from zocalo.transport import Delivery, create_transport

RESULTS = 200


class StatusWatch:
    """Status broadcasts, for tests to wait on."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.reports: list[dict[str, Any]] = []

    def __call__(self, delivery: Delivery) -> None:
        with self.condition:
            self.reports.append(json.loads(delivery.body))
            self.condition.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        with self.condition:
            if not self.condition.wait_for(
                lambda: any(predicate(report) for report in self.reports), 60
            ):
                raise AssertionError(f"no status with {what}; last: {self.reports[-3:]}")
            return [report for report in self.reports if predicate(report)][-1]


def count_rows(url: str) -> tuple[int, int]:
    """(rows, distinct images) in the results table; (-1, -1) while unreachable."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            total, distinct = connection.execute(
                text("SELECT COUNT(*), COUNT(DISTINCT image) FROM results")
            ).one()
            return total, distinct
    except Exception:
        return -1, -1
    finally:
        engine.dispose()


class Stream:
    """Publishes messages one by one at about ``rate`` per second, on a thread."""

    def __init__(self, url: str, messages: list[Any], rate: float) -> None:
        self.done = threading.Event()
        self.sent = 0
        self._stop = threading.Event()

        def run() -> None:
            with create_transport(url) as transport:
                for message in messages:
                    if self._stop.is_set():
                        return
                    transport.publish([message]).result(30)
                    self.sent += 1
                    self._stop.wait(1 / rate)  # the stream's pace, not a wait for an event
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(30)


@pytest.mark.slow
def test_the_writer_outlives_its_database(
    supervised, broker, on_broker, database_server, collector, wait_until, tmp_path: Path
):
    url = database_server.new_database()
    create_results_table(url)
    status = StatusWatch()
    on_broker.subscribe_broadcast(STATUS_TOPIC, status)
    passed_on = collector(ack_with=on_broker)
    on_broker.subscribe(WRITTEN, passed_on)
    log = tmp_path / "writer.log"
    with log.open("wb") as stderr:
        writer = supervised(
            "facility_services:QuickWriter",
            "--transport",
            broker,
            env={"ZOCALO_DBWRITER_DATABASE": url},
            stderr=stderr,
        )
    status.wait_for(lambda r: r["serviceclass"] == "QuickWriter" and r["status"] == 2, "idle")
    payloads = [{"image": n, "result": {"spots": n % 7}} for n in range(RESULTS)]
    began = time.monotonic()
    stream = Stream(broker, writes(PER_IMAGE, payloads), rate=50)
    try:
        wait_until(lambda: count_rows(url)[0] >= RESULTS // 10, "the first rows", timeout=60)
        crash = database_server.name == "mariadb"
        database_server.kill() if crash else database_server.stop()
        stopped, sent_before_stop = time.monotonic(), stream.sent
        waiting = status.wait_for(
            lambda r: "waiting for the database" in r.get("note", ""), "the database awaited"
        )
        assert stream.done.wait(60), "the stream went on while the database was down"
        database_server.start()
        restarted = time.monotonic()
        wait_until(lambda: count_rows(url)[0] >= RESULTS, f"{RESULTS} rows", timeout=120)
        drained = time.monotonic()
    finally:
        stream.close()
    wait_until(
        lambda: len({payload_of_body(d) for d in passed_on.deliveries}) >= RESULTS,
        "every result passed on",
        timeout=60,
    )
    rows, distinct = count_rows(url)
    recovered = status.wait_for(
        lambda r: r["serviceclass"] == "QuickWriter" and "note" not in r and r["status"] == 2,
        "the note gone once the backlog drained",
    )
    put_off = re.findall(r"(\d+) messages were put off meanwhile", log.read_text())
    figures = {
        "test": "dbwriter-outage",
        "database": database_server.name,
        "stopped": "kill -9" if crash else "clean stop",
        "broker": broker.partition(":")[0],
        "results": RESULTS,
        "rows": rows,
        "duplicates": rows - distinct,
        "sent_before_stop": sent_before_stop,
        "down_s": round(restarted - stopped, 2),
        "drain_s": round(drained - restarted, 2),
        "total_s": round(drained - began, 2),
        "put_off": sum(int(n) for n in put_off),
        "passed_on": len(passed_on.deliveries),
    }
    print(json.dumps(figures))
    assert (rows, distinct) == (RESULTS, RESULTS), figures
    assert sent_before_stop < RESULTS, "the database stopped mid-stream"
    assert figures["put_off"] > 0, "messages waited: " + log.read_text()[-3000:]
    assert waiting["status"] in (2, 4), "healthy (idle or processing) while waiting"
    assert recovered["restarts"] == 0 and writer.poll() is None, "the service never failed"
    assert (recovered["failed"], recovered["dead_lettered"]) == (0, 0), "no delivery burned"


def payload_of_body(delivery: Delivery) -> int:
    return json.loads(delivery.body)["payload"]["image"]


def test_join_waits_for_its_database_too(
    start_service, memory_client, collector, database_server, wait_until
):
    """Parts that arrive while Join's database is down wait, and complete it when it returns."""
    url = database_server.new_database()
    join = Join(database=url)
    join.first_wait, join.max_wait = 0.05, 0.5
    start_service(join)
    joined = collector(ack_with=memory_client)
    memory_client.subscribe(JOINED, joined)
    messages = parts(
        join_recipe({"key": "dc-outage", "expected": 6, "index": "i"}),
        [{"i": i} for i in range(6)],
    )
    memory_client.publish(messages[:3]).result(30)
    database_server.stop()
    memory_client.publish(messages[3:]).result(30)
    wait_until(lambda: join.status_note() is not None, "a part finding the database gone")
    assert "waiting for the database" in (join.status_note() or "")
    database_server.start()
    (delivery,) = joined.wait_for_count(1, timeout=30)
    assert payload_of(delivery)["parts"] == [{"i": i} for i in range(6)]
    assert join.status_note() is None
