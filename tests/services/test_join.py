"""Join in a service runner on the in-memory broker, its state in SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from join_jobs import JOINED, TIMED_OUT, join_recipe, parts, payload_of, send
from sqlalchemy import create_engine, text

from zocalo.services.join import KEY_HEADER, QUEUE, Join
from zocalo.transport import dlq_name
from zocalo.transport.base import DLQ_REASON_HEADER


@pytest.fixture
def join(start_service: Callable[..., Any], database_url: str) -> Join:
    service = Join(database=database_url)
    start_service(service)
    return service


@pytest.fixture
def outputs(memory_client, collector):
    """(collections sent complete, collections sent on their timeout)."""
    joined, timed_out = collector(ack_with=memory_client), collector(ack_with=memory_client)
    memory_client.subscribe(JOINED, joined)
    memory_client.subscribe(TIMED_OUT, timed_out)
    return joined, timed_out


def settled(memory_client, joined) -> list[Any]:
    """Everything sent before has been handled: a one-part collection sent last is out.

    (One Join handles its queue in order.) Returns the collections sent before it.
    """
    key = f"sentinel-{uuid.uuid4().hex}"
    send(memory_client, parts(join_recipe({"key": key, "expected": 1}), [{}]))
    done = joined.wait_until(
        lambda deliveries: any(payload_of(d)["key"] == key for d in deliveries), "the sentinel"
    )
    return [payload_of(d) for d in done if payload_of(d)["key"] != key]


def table_rows(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def test_a_whole_collection_is_sent_once_in_index_order(join, memory_client, outputs):
    joined, timed_out = outputs
    recipe = join_recipe({"key": "dc-1", "expected": 4, "index": "image"})
    send(memory_client, parts(recipe, [{"image": n, "spots": 10 * n} for n in (3, 1, 4, 2)]))
    (delivery,) = joined.wait_for_count(1)
    assert payload_of(delivery) == {
        "key": "dc-1",
        "complete": True,
        "expected": 4,
        "received": 4,
        "parts": [{"image": n, "spots": 10 * n} for n in (1, 2, 3, 4)],
    }
    assert delivery.headers[KEY_HEADER] == "dc-1"
    assert settled(memory_client, joined) == [payload_of(delivery)]
    assert timed_out.deliveries == []


def test_a_part_delivered_twice_counts_once(join, memory_client, outputs):
    joined, _ = outputs
    recipe = join_recipe({"key": "dc-2", "expected": 3, "index": "i"})
    send(memory_client, parts(recipe, [{"i": 0}, {"i": 1}, {"i": 1, "again": True}, {"i": 2}]))
    (delivery,) = joined.wait_for_count(1)
    assert payload_of(delivery)["parts"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert join.counts["duplicates"] == 1


def test_a_part_after_the_collection_was_sent_is_dropped(join, memory_client, outputs):
    joined, _ = outputs
    recipe = join_recipe({"key": "dc-3", "expected": 2, "index": "i"})
    first = parts(recipe, [{"i": 0}, {"i": 1}])
    send(memory_client, first)
    joined.wait_for_count(1)
    send(memory_client, [first[1]])  # the very same message once more
    assert [result["key"] for result in settled(memory_client, joined)] == ["dc-3"]
    assert join.counts["late"] == 1


def test_without_an_index_each_message_is_a_part(join, memory_client, outputs):
    joined, _ = outputs
    recipe = join_recipe({"key": "dc-4", "expected": 3})
    send(memory_client, parts(recipe, [{"done": True}] * 3))
    (delivery,) = joined.wait_for_count(1)
    assert payload_of(delivery)["parts"] == [{"done": True}] * 3


def test_the_count_can_come_with_the_parts(join, memory_client, outputs):
    joined, _ = outputs
    recipe = join_recipe({"key": "dc-5", "expected_from": "images", "index": "i"})
    send(memory_client, parts(recipe, [{"i": n, "images": 3} for n in range(3)]))
    (delivery,) = joined.wait_for_count(1)
    assert payload_of(delivery)["expected"] == 3
    assert payload_of(delivery)["received"] == 3


@pytest.mark.parametrize(
    "routing",
    [
        {"output": {"complete": 2, "timeout": 3}},
        {"output": {"complete": 2, "error": 3}},
        {"output": 2, "error": 3},
    ],
    ids=["timeout channel", "error channel", "recipe error steps"],
)
def test_a_collection_that_times_out_sends_what_it_has(join, memory_client, outputs, routing):
    joined, timed_out = outputs
    recipe = join_recipe({"key": "dc-6", "expected": 5, "index": "i", "timeout": 0.5})
    recipe["1"]["output"] = routing["output"]
    if "error" in routing:
        recipe["error"] = routing["error"]
    late = parts(recipe, [{"i": 2}, {"i": 0}, {"i": 3}])
    send(memory_client, late[:2])
    (delivery,) = timed_out.wait_for_count(1)
    assert payload_of(delivery) == {
        "key": "dc-6",
        "complete": False,
        "expected": 5,
        "received": 2,
        "parts": [{"i": 0}, {"i": 2}],
    }
    send(memory_client, late[2:])  # too late: dropped, and no second collection starts
    assert settled(memory_client, joined) == []
    assert join.counts["late"] == 1
    assert len(timed_out.deliveries) == 1


def test_the_same_key_from_another_recipe_starts_again(join, memory_client, outputs):
    """The same data collection processed again, after its first collection was sent."""
    joined, _ = outputs
    recipe = join_recipe({"key": "dc-7", "expected": 2, "index": "i"})
    send(memory_client, parts(recipe, [{"i": 0, "run": 1}, {"i": 1, "run": 1}]))
    joined.wait_for_count(1)
    send(memory_client, parts(recipe, [{"i": 0, "run": 2}, {"i": 1, "run": 2}]))
    first, second = (payload_of(d) for d in joined.wait_for_count(2))
    assert [part["run"] for part in first["parts"]] == [1, 1]
    assert [part["run"] for part in second["parts"]] == [2, 2]


def test_fifty_keys_interleaved_and_their_state_cleaned_up(
    join, memory_client, outputs, database_url, wait_until
):
    joined, timed_out = outputs
    messages = []
    for number in range(50):
        recipe = join_recipe({"key": f"dc-{number}", "expected": 4, "index": "i", "keep": 0.2})
        messages += parts(recipe, [{"i": i, "dc": number} for i in range(4)])
    random.Random(16).shuffle(messages)
    send(memory_client, messages)
    results = [payload_of(d) for d in joined.wait_for_count(50, timeout=60)]
    assert sorted(result["key"] for result in results) == sorted(f"dc-{n}" for n in range(50))
    for result in results:
        number = int(result["key"].removeprefix("dc-"))
        assert result["parts"] == [{"i": i, "dc": number} for i in range(4)]
    assert len(settled(memory_client, joined)) == 50
    assert timed_out.deliveries == []
    wait_until(
        lambda: table_rows(database_url, "zocalo_join_collections") == 1,  # the sentinel's
        "finished collections forgotten",
    )
    assert table_rows(database_url, "zocalo_join_parts") == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_parameters_it_cannot_use_send_the_part_to_the_dead_letter_queue(
    start_service, database_url, memory_client, collector
):
    start_service(Join(database=database_url))
    dead = collector(ack_with=memory_client)
    memory_client.declare_queue(dlq_name(QUEUE))
    memory_client.subscribe(dlq_name(QUEUE), dead)
    send(memory_client, parts(join_recipe({"key": "dc-8"}), [{}]))
    (delivery,) = dead.wait_for_count(1)
    assert (
        "needs one of the parameters 'expected' or 'expected_from'"
        in (delivery.headers[DLQ_REASON_HEADER])
    )


def test_two_join_instances_share_one_database(
    start_service, database_url, memory_client, outputs, wait_until
):
    """Parts of one collection handled at once by two instances: the collection row lock
    (SQLite: one writer at a time) makes each count every part and only one send."""
    joined, timed_out = outputs
    runners = [start_service(Join(database=database_url)) for _ in range(2)]
    messages = []
    for number in range(10):  # in order: neighbouring parts of one collection, at once
        recipe = join_recipe({"key": f"dc-{number}", "expected": 20, "index": "i", "keep": 0.2})
        messages += parts(recipe, [{"i": i} for i in range(20)])
    send(memory_client, messages)
    results = [payload_of(d) for d in joined.wait_for_count(10, timeout=60)]
    assert all(result["parts"] == [{"i": i} for i in range(20)] for result in results)
    wait_until(lambda: table_rows(database_url, "zocalo_join_collections") == 0, "all forgotten")
    assert len(joined.deliveries) == 10, "each collection sent once"
    assert timed_out.deliveries == []
    assert all(runner.stats.handled > 0 for runner in runners), "both took part"
