"""Join as real ``zocalo.service`` processes, killed where it hurts, on SQLite and RabbitMQ."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

import pytest
from join_jobs import JOINED, TIMED_OUT, join_recipe, parts, payload_of, send
from sqlalchemy import create_engine, text

from zocalo.transport import Transport

pytestmark = pytest.mark.slow


@pytest.fixture
def join_database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/join.db"


def recorded_parts(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT COUNT(*) FROM zocalo_join_parts")).scalar_one()
    except Exception:  # the table is created with the first part
        return 0
    finally:
        engine.dispose()


def sentinel_after(client: Transport, joined) -> list[dict]:
    """Send a one-part collection and wait for it: everything sent before is handled."""
    key = f"sentinel-{uuid.uuid4().hex}"
    send(client, parts(join_recipe({"key": key, "expected": 1}), [{}]))
    done = joined.wait_until(
        lambda deliveries: any(payload_of(d)["key"] == key for d in deliveries),
        "the sentinel",
        timeout=60,
    )
    return [payload_of(d) for d in done if payload_of(d)["key"] != key]


def kill_group(process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def test_kill_9_of_the_join_service_mid_collection_loses_and_repeats_nothing(
    supervised, broker, on_broker, join_database, collector, wait_until
):
    joined = collector(ack_with=on_broker)
    on_broker.subscribe(JOINED, joined)
    environment = {"ZOCALO_JOIN_DATABASE": join_database}
    first = supervised("facility_services:QuickJoin", "--transport", broker, env=environment)
    messages = parts(
        join_recipe({"key": "dc-kill", "expected": 40, "index": "i"}),
        [{"i": i} for i in range(40)],
    )
    send(on_broker, messages[:30])
    wait_until(lambda: recorded_parts(join_database) >= 5, "some parts recorded", timeout=60)
    kill_group(first)  # supervisor and worker, mid-collection: prefetched parts unacked
    assert recorded_parts(join_database) < 40
    send(on_broker, messages[30:])
    supervised("facility_services:QuickJoin", "--transport", broker, env=environment)
    (delivery,) = joined.wait_for_count(1, timeout=60)
    assert payload_of(delivery)["parts"] == [{"i": i} for i in range(40)]
    assert sentinel_after(on_broker, joined) == [payload_of(delivery)], "sent once"


def test_a_crash_after_the_last_part_is_recorded_sends_the_collection_once(
    supervised, broker, on_broker, join_database, collector, tmp_path
):
    """The worst moment: the collection is marked sent in the database, but the worker
    dies before the runner publishes it and acknowledges the part."""
    joined = collector(ack_with=on_broker)
    on_broker.subscribe(JOINED, joined)
    log = tmp_path / "join.log"
    with log.open("wb") as stderr:
        supervised(
            "facility_services:CrashingJoin",
            "--restart",
            "--transport",
            broker,
            env={
                "ZOCALO_JOIN_DATABASE": join_database,
                "JOIN_CRASH_AFTER": "9",
                "JOIN_CRASH_MARK": str(tmp_path / "crashed"),
            },
            stderr=stderr,
        )
    recipe = join_recipe({"key": "dc-crash", "expected": 10, "index": "i"})
    send(on_broker, parts(recipe, [{"i": i} for i in range(10)]))
    (delivery,) = joined.wait_for_count(1, timeout=60)
    assert payload_of(delivery)["parts"] == [{"i": i} for i in range(10)]
    assert sentinel_after(on_broker, joined) == [payload_of(delivery)], "sent once"
    assert (tmp_path / "crashed").exists()
    assert "collection dc-crash: sending it again" in log.read_text()


def test_a_crash_after_the_first_part_is_recorded_still_times_out(
    supervised, broker, on_broker, join_database, collector, tmp_path
):
    """The timer goes out with the first part's acknowledgement: a crash between its
    commit and that publish must not leave a collection that never ends."""
    timed_out = collector(ack_with=on_broker)
    on_broker.subscribe(TIMED_OUT, timed_out)
    supervised(
        "facility_services:CrashingJoin",
        "--restart",
        "--transport",
        broker,
        env={
            "ZOCALO_JOIN_DATABASE": join_database,
            "JOIN_CRASH_AFTER": "0",
            "JOIN_CRASH_MARK": str(tmp_path / "crashed"),
        },
    )
    recipe = join_recipe({"key": "dc-early", "expected": 5, "index": "i", "timeout": 2})
    send(on_broker, parts(recipe, [{"i": 0}, {"i": 1}]))
    (delivery,) = timed_out.wait_for_count(1, timeout=60)
    assert payload_of(delivery)["parts"] == [{"i": 0}, {"i": 1}]
    assert payload_of(delivery)["complete"] is False
    assert (tmp_path / "crashed").exists()
