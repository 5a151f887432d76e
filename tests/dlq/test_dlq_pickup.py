"""zocalo.pickup: the requests zocalo.go left on disk go to processing_recipe oldest first,
each file deleted only once the broker confirmed it; bad files and brokers are one line."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from dlq_helpers import one_error_line

from zocalo.cli.go import command as go
from zocalo.cli.pickup import command as pickup
from zocalo.dlq.pickup import PROCESSING_QUEUE, only_pickup
from zocalo.rabbitmq_admin import ManagementAPI


def drop(directory: Path, message: dict, *, age: float, host: str = "ws1") -> Path:
    """A file as zocalo.go writes it (COMPAT 4.1), modified ``age`` seconds ago."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / str(uuid.uuid4())
    headers = {"zocalo.go.user": "alice", "zocalo.go.host": host}
    path.write_text(json.dumps({"headers": headers, "message": message}, indent=2) + "\n")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_requests_are_sent_oldest_first_with_their_headers_and_removed(broker, run, tmp_path):
    tmp_path = tmp_path / "drops"
    broker.client.declare_queue(PROCESSING_QUEUE)
    broker.take_all(PROCESSING_QUEUE)  # what earlier tests left there
    newer = drop(tmp_path, {"recipes": ["b"], "parameters": {"ispyb_dcid": 2}}, age=10)
    older = drop(tmp_path, {"recipes": ["a", "x"], "parameters": {"ispyb_dcid": 1}}, age=100)
    (tmp_path / ".being-written").write_text("{")
    result = run(pickup, "-t", broker.url, "--location", str(tmp_path), "-w", "0", "-d", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Found 2 files",
        f"Sending {older} from host ws1 with recipes a,x",
        "Done (1 of 2)",
        f"Sending {newer} from host ws1 with recipes b",
        "Done (2 of 2)",
    ]
    assert not older.exists() and not newer.exists()
    assert (tmp_path / ".being-written").exists(), "a file still being written is left alone"
    sent = broker.take_all(PROCESSING_QUEUE)
    assert [json.loads(d.body)["parameters"]["ispyb_dcid"] for d in sent] == [1, 2]
    assert all(d.headers["zocalo.go.user"] == "alice" for d in sent)


def test_the_location_comes_from_the_site_configuration(sqlite_broker, run, tmp_path):
    drops = tmp_path / "drops"
    drop(drops, {"recipes": ["a"]}, age=1)
    config = tmp_path / "site.yaml"
    config.write_text(
        "version: 1\nstorage:\n  plugin: storage\n"
        f"  zocalo.go.fallback_location: {drops}\nenvironments:\n  default: [storage]\n"
    )
    result = run(pickup, "-t", sqlite_broker, "--config", str(config), "-w", "0")
    assert result.exit_code == 0, result.output
    assert list(drops.iterdir()) == []


def test_without_a_location_it_says_where_to_give_one(sqlite_broker, run):
    result = run(pickup, "-t", sqlite_broker)
    assert result.exit_code == 2
    assert "zocalo.go.fallback_location" in result.output and "--location" in result.output


def test_a_bad_file_is_named_and_nothing_is_sent(sqlite_broker, make_broker, run, tmp_path):
    tmp_path = tmp_path / "drops"
    good = drop(tmp_path, {"recipes": ["a"]}, age=100)
    bad = tmp_path / "broken"
    bad.write_text('{"headers": {}')
    result = run(pickup, "-t", sqlite_broker, "--location", str(tmp_path), "-w", "0")
    assert result.exit_code == 1
    assert one_error_line(result.output).startswith(f"Error: {bad}: not a zocalo.go request")
    assert good.exists() and bad.exists()
    assert make_broker(sqlite_broker).take_all(PROCESSING_QUEUE) == []


def test_a_missing_directory_is_one_line(sqlite_broker, run, tmp_path):
    result = run(pickup, "-t", sqlite_broker, "--location", str(tmp_path / "gone"), "-w", "0")
    assert one_error_line(result.output) == f"Error: {tmp_path / 'gone'}: cannot be opened " + (
        "(No such file or directory)"
    )


@pytest.mark.parametrize("kind", ["sqlite", "rabbitmq"])
def test_a_broker_that_is_down_keeps_every_file(kind, run, tmp_path):
    files = [drop(tmp_path / "drops", {"recipes": ["a"]}, age=n) for n in (1, 2)]
    if kind == "sqlite":
        (tmp_path / "a-file").write_text("")
        url, expected = f"sqlite:///{tmp_path}/a-file/broker.db", "cannot create broker file"
    else:
        url, expected = "amqp://guest:guest@127.0.0.1:1/", "cannot connect to RabbitMQ"
    result = run(pickup, "-t", url, "--location", str(tmp_path / "drops"), "-w", "0")
    assert result.exit_code == 1
    assert expected in one_error_line(result.output)
    assert all(path.exists() for path in files)


@pytest.mark.rabbitmq
def test_a_request_rabbitmq_refuses_keeps_its_file(rabbitmq_vhost_url, run, tmp_path):
    """No processing_recipe queue in a fresh vhost of its own: the send is refused."""
    api = ManagementAPI("http://127.0.0.1:15672", "guest", "guest")
    vhost = f"zocalo-test-pickup-{uuid.uuid4().hex[:8]}"
    api.put_vhost(vhost)
    api.put_permission(vhost, "guest", ".*", ".*", ".*")
    try:
        path = drop(tmp_path, {"recipes": ["a"]}, age=1)
        url = rabbitmq_vhost_url.rsplit("/", 1)[0] + "/" + vhost
        result = run(pickup, "-t", url, "--location", str(tmp_path), "-w", "0")
        assert result.exit_code == 1
        line = one_error_line(result.output)
        assert line.startswith(f"Error: {path}: not sent (the file is kept): ")
        assert "processing_recipe" in line and path.exists()
    finally:
        api.delete_vhost(vhost)
        api.close()


def test_only_one_pickup_sends_from_a_directory_at_a_time(sqlite_broker, run, tmp_path):
    tmp_path = tmp_path / "drops"
    drop(tmp_path, {"recipes": ["a"]}, age=1)
    with only_pickup(tmp_path):
        result = run(pickup, "-t", sqlite_broker, "--location", str(tmp_path), "-w", "0")
    assert result.exit_code == 1
    assert "another zocalo.pickup is sending the requests in" in one_error_line(result.output)
    assert len(list(tmp_path.iterdir())) == 1


def test_what_zocalo_go_stored_while_the_broker_was_away_is_picked_up(broker, run, tmp_path):
    """zocalo.go --drop (as when the broker cannot be reached) then zocalo.pickup: the
    Dispatcher's queue gets the request zocalo.go would have sent, headers and all."""
    drops = tmp_path / "drops"
    config = tmp_path / "site.yaml"
    config.write_text(
        "version: 1\nstorage:\n  plugin: storage\n"
        f"  zocalo.go.fallback_location: {drops}\nenvironments:\n  default: [storage]\n"
    )
    stored = run(go, "--config", str(config), "-r", "spots", "42", "--drop", "-t", broker.url)
    assert stored.exit_code == 0, stored.output
    (path,) = list(drops.iterdir())
    broker.client.declare_queue(PROCESSING_QUEUE)
    broker.take_all(PROCESSING_QUEUE)  # what earlier tests left there
    result = run(pickup, "--config", str(config), "-t", broker.url, "-w", "0")
    assert result.exit_code == 0, result.output
    assert not path.exists()
    (request,) = broker.take_all(PROCESSING_QUEUE)
    body = json.loads(request.body)
    assert (body["recipes"], body["parameters"]["ispyb_dcid"]) == (["spots"], 42)
    assert {"zocalo.go.user", "zocalo.go.host"} <= set(request.headers)
