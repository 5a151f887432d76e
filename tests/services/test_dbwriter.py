"""The database writer in a service runner on the in-memory broker, into SQLite, PostgreSQL
and MariaDB."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from writer_jobs import PER_IMAGE, WRITTEN, create_results_table, rows, send, writes

from zocalo.config import load_configuration
from zocalo.services.dbwriter import DATABASE_VARIABLE, QUEUE, DatabaseWriter
from zocalo.transport import dlq_name
from zocalo.transport.base import DLQ_REASON_HEADER


@pytest.fixture
def writer(start_service: Callable[..., Any], database_url: str) -> DatabaseWriter:
    create_results_table(database_url)
    service = DatabaseWriter(database=database_url)
    start_service(service)
    return service


@pytest.fixture
def written(memory_client, collector):
    """Messages the writer passed on."""
    passed_on = collector(ack_with=memory_client)
    memory_client.subscribe(WRITTEN, passed_on)
    return passed_on


def test_rows_are_written_as_the_step_parameters_describe(
    writer, memory_client, written, database_url
):
    payloads = [{"image": n, "result": {"spots": 10 * n}} for n in range(1, 4)]
    send(memory_client, writes(PER_IMAGE, payloads))
    passed_on = written.wait_for_count(3)
    assert sorted((json.loads(d.body)["payload"] for d in passed_on), key=str) == sorted(
        payloads, key=str
    ), "each payload goes on to the next step"
    assert sorted(rows(database_url), key=str) == sorted(
        ({"dcid": 42, "image": n, "spots": 10 * n} for n in range(1, 4)), key=str
    )


def test_a_message_delivered_again_writes_no_second_row(
    writer, memory_client, written, database_url
):
    messages = writes(PER_IMAGE, [{"image": n, "result": {"spots": n}} for n in range(5)])
    send(memory_client, messages)
    send(memory_client, messages[1:3])  # the same messages again (a redelivery, an upstream rerun)
    written.wait_for_count(7)  # every copy goes on: the next step may not have had it
    assert len(rows(database_url)) == 5
    assert writer.counts == {"written": 5, "duplicates": 2}


def test_the_key_is_the_recipe_the_step_and_the_client_key(
    writer, memory_client, written, database_url
):
    send(memory_client, writes(PER_IMAGE, [{"image": 1, "result": {"spots": 1}}]))
    send(memory_client, writes(PER_IMAGE, [{"image": 1, "result": {"spots": 2}}]))  # another recipe
    without_key = {"table": "results", "columns": {"spots": "spots"}}
    send(memory_client, writes(without_key, [{"spots": 7}, {"spots": 8}]))  # one row per recipe
    written.wait_for_count(4)
    assert sorted(row["spots"] for row in rows(database_url)) == [1, 2, 7]


def test_objects_and_lists_are_written_as_json(writer, memory_client, written, database_url):
    parameters = {"table": "results", "columns": {"summary": "summary"}}
    send(memory_client, writes(parameters, [{"summary": {"spots": [1, 2], "ok": True}}]))
    written.wait_for_count(1)
    (row,) = rows(database_url)
    assert json.loads(row["summary"]) == {"spots": [1, 2], "ok": True}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("parameters", "payload", "reason"),
    [
        ({"columns": {"spots": "spots"}}, {"spots": 1}, "needs the parameter 'table'"),
        ({"table": "nope", "columns": {"spots": "spots"}}, {"spots": 1}, "no table 'nope'"),
        ({"table": "results", "columns": {"colour": "spots"}}, {"spots": 1}, "no column 'colour'"),
        ({"table": "results", "columns": {"spots": "spots"}}, {"image": 1}, "no field 'spots'"),
    ],
    ids=["no table named", "no such table", "no such column", "no such field"],
)
def test_a_row_it_cannot_write_goes_to_the_dead_letter_queue(
    start_service, database_url, memory_client, collector, parameters, payload, reason
):
    create_results_table(database_url)
    start_service(DatabaseWriter(database=database_url))
    dead = collector(ack_with=memory_client)
    memory_client.declare_queue(dlq_name(QUEUE))
    memory_client.subscribe(dlq_name(QUEUE), dead)
    send(memory_client, writes(parameters, [payload]))
    (delivery,) = dead.wait_for_count(1)
    assert reason in delivery.headers[DLQ_REASON_HEADER]
    assert rows(database_url) == []


def test_the_database_comes_from_the_argument_the_variable_or_the_site_configuration(
    tmp_path, monkeypatch
):
    site = tmp_path / "site.yaml"
    site.write_text(
        "version: 1\n"
        "site-storage:\n"
        "  plugin: storage\n"
        f"  zocalo.dbwriter.database: sqlite:///{tmp_path}/site.db\n"
        "environments:\n"
        "  default: [site-storage]\n"
    )

    def chosen(**given: str) -> str:
        writer = DatabaseWriter(**given)
        writer.site_config = load_configuration(site)
        writer.initializing()
        writer.stopping()
        return writer.url

    monkeypatch.delenv(DATABASE_VARIABLE, raising=False)
    assert chosen() == f"sqlite:///{tmp_path}/site.db"
    monkeypatch.setenv(DATABASE_VARIABLE, f"sqlite:///{tmp_path}/variable.db")
    assert chosen() == f"sqlite:///{tmp_path}/variable.db"
    assert chosen(database=f"sqlite:///{tmp_path}/given.db") == f"sqlite:///{tmp_path}/given.db"
