"""zocalo.dlq_check, zocalo.dlq_purge and zocalo.dlq_reinject on the embedded broker, on
RabbitMQ and on ActiveMQ: python-zocalo's output and files, and a round trip that loses
nothing."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from dlq_helpers import Broker, one_error_line

from zocalo.cli.dlq_check import command as dlq_check
from zocalo.cli.dlq_purge import command as dlq_purge
from zocalo.cli.dlq_reinject import command as dlq_reinject
from zocalo.recipe import Recipe, wire
from zocalo.transport import dlq_name

RECIPE = Recipe(
    {
        "1": {"queue": "placeholder.find", "output": 2},
        "2": {"queue": "placeholder.record"},
        "start": [[1, {}]],
    }
)


def decoded(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def exported_files(location: Path) -> list[Path]:
    return sorted(path for path in location.glob("*/msg-*"))


def check_until(run, broker: Broker, expected: dict[str, int], *options: str):
    """dlq_check's result once it reports ``expected`` (RabbitMQ's statistics lag)."""
    deadline = time.monotonic() + 30
    while True:
        result = run(dlq_check, "-t", broker.url, "--json", *options)
        reported = json.loads(result.stdout)["queues"]
        if all(reported.get(name) == count for name, count in expected.items()):
            return result
        assert time.monotonic() < deadline, f"dlq_check still reports {reported}"
        time.sleep(0.5)


def test_check_reports_each_dead_letter_queue_and_fails_when_any_holds_messages(broker, run):
    first, second = broker.queue("first"), broker.queue("second")
    broker.dead_letter(first, [b"1", b"2", b"3"])
    broker.dead_letter(second, [b"4"])
    result = check_until(run, broker, {dlq_name(first): 3, dlq_name(second): 1})
    assert result.exit_code == 1
    text = run(dlq_check, "-t", broker.url)
    assert text.exit_code == 1
    assert f"DLQ for {first} contains 3 entries" in text.stdout.splitlines()
    assert f"DLQ for {second} contains 1 entries" in text.stdout.splitlines()
    assert "Total of " in text.stderr and " DLQ messages found" in text.stderr
    if broker.kind != "rabbitmq":  # a vhost of the whole session
        assert text.stderr.strip() == "Total of 4 DLQ messages found"
        assert json.loads(result.stdout)["total"] == 4


def test_check_says_so_when_nothing_is_dead_lettered(own_broker_url, run):
    result = run(dlq_check, "-t", own_broker_url)
    assert (result.exit_code, result.stdout) == (0, "No DLQ messages found\n")
    as_json = run(dlq_check, "-t", own_broker_url, "--json")
    assert json.loads(as_json.stdout)["total"] == 0 and as_json.exit_code == 0


def test_check_beside_rabbitmq_takes_a_namespace_as_a_queue_prefix(
    make_broker, own_broker_url, run
):
    broker = make_broker(own_broker_url)
    broker.dead_letter("beamline.spots", [b"1"])
    broker.dead_letter("other.spots", [b"2"])
    result = run(dlq_check, "-t", own_broker_url, "-n", "beamline")
    assert result.stdout == "DLQ for beamline.spots contains 1 entries\n"


def test_purge_writes_each_message_to_a_private_file_then_removes_it(broker, run, tmp_path):
    queue = broker.queue("purged")
    bodies = [b'{"image": 1}', b"not json", b"\xff\xfe"]
    broker.dead_letter(queue, bodies, headers={"mine": "kept"})
    location = tmp_path / "DLQ"
    result = run(dlq_purge, "-t", broker.url, "--location", str(location), queue)
    assert result.exit_code == 0, result.output
    files = exported_files(location)
    assert len(files) == 3
    lines = result.stdout.splitlines()
    assert lines[0] == "Looking for DLQ messages in 1 queues..."
    assert lines[1] == f"Found 3 DLQ messages in {dlq_name(queue)}"
    assert [line.strip() for line in lines[3:8:2]] == [str(path) for path in files] or sorted(
        line.strip() for line in lines[3:8:2]
    ) == [str(path) for path in files]
    assert all(
        line.startswith("    Message ") and line.endswith(" exported:") for line in lines[2:8:2]
    )
    assert lines[-1] == "Done."
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    contents = [json.loads(path.read_text()) for path in files]
    assert {c["header"]["zocalo-dlq-queue"] for c in contents} == {queue}
    assert all(c["header"]["mine"] == "kept" for c in contents)
    assert {json.dumps(c["message"]) for c in contents} >= {'{"image": 1}', '"not json"'}
    assert broker.take_all(dlq_name(queue)) == [], "purged messages left the queue"


def test_purge_without_queue_names_takes_every_dead_letter_queue(
    make_broker, own_broker_url, run, tmp_path
):
    broker = make_broker(own_broker_url)
    broker.dead_letter("a", [b"1"])
    broker.dead_letter("dlq.b", [b"2"])  # named either way
    result = run(dlq_purge, "-t", own_broker_url, "--location", str(tmp_path), "--wait", "0.5")
    assert result.stdout.splitlines()[0] == "Looking for DLQ messages in 2 queues..."
    assert len(exported_files(tmp_path)) == 2


def test_purge_refuses_a_queue_the_broker_does_not_have(broker, run, tmp_path):
    queue = broker.queue("present")
    broker.dead_letter(queue, [b"1"])
    missing = broker.queue("missing")
    result = run(dlq_purge, "-t", broker.url, "--location", str(tmp_path), queue, missing)
    assert result.exit_code == 1
    assert f"no queue dlq.{missing} on " in one_error_line(result.output)
    assert exported_files(tmp_path) == []
    assert [d.body for d in broker.take_all(dlq_name(queue))] == [b"1"], "nothing was taken"


def recipe_message(pointer: int, path: list[int], queues: dict[int, str]) -> bytes:
    recipe = Recipe(RECIPE.to_dict())
    for step, queue in queues.items():
        recipe.steps[step]["queue"] = queue
    return wire.encode(recipe, pointer, path, {"ID": "job-7"}, {"image": 7})


def test_purged_files_reinjected_from_purges_output_go_back_and_are_removed(broker, run, tmp_path):
    find, record = broker.queue("find"), broker.queue("record")
    body = recipe_message(2, [1], {1: find, 2: record})
    broker.dead_letter(record, [body, b"plain"], headers={"workflows-recipe": True})
    purged = run(dlq_purge, "-t", broker.url, "--location", str(tmp_path), record)
    files = exported_files(tmp_path)
    result = run(dlq_reinject, "-t", broker.url, "--remove", input=purged.stdout)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 filenames read from stdin\n")
    assert exported_files(tmp_path) == [], "removed once the broker confirmed"
    back = broker.take_all(record)
    # Decoded-equal (a file keeps JSON with sorted keys, as python-zocalo's do).
    assert sorted(json.dumps(decoded(d.body), sort_keys=True) for d in back) == sorted(
        json.dumps(decoded(b), sort_keys=True) for b in (body, b"plain")
    )
    for delivery in back:
        assert delivery.headers["dlq-reinjected"] == "True"
        assert delivery.headers["workflows-recipe"] is True
        assert "zocalo-dlq-reason" not in delivery.headers
        assert "zocalo-dlq-history" in delivery.headers
    assert all(
        f"Reinjected {path} to queue '{record}' (file removed)" in result.stdout for path in files
    )


def test_reinject_with_step_restarts_the_recipe_at_that_step(broker, run, tmp_path):
    find, record = broker.queue("find"), broker.queue("record")
    broker.dead_letter(
        record, [recipe_message(2, [1], {1: find, 2: record})], headers={"workflows-recipe": True}
    )
    run(dlq_purge, "-t", broker.url, "--location", str(tmp_path), record)
    (path,) = exported_files(tmp_path)
    broker.client.declare_queue(find)  # its service has run (RabbitMQ refuses the unknown)
    result = run(dlq_reinject, "-t", broker.url, "--step", "1", str(path))
    assert result.exit_code == 0, result.output
    (delivery,) = broker.take_all(find)
    message = wire.decode(delivery.body, delivery.headers, "restarted")
    assert (message.pointer, message.path, message.payload) == (1, [], {"image": 7})
    assert path.exists(), "kept without --remove"


def test_a_dead_letter_file_python_zocalo_wrote_on_activemq_goes_back(broker, run, tmp_path):
    """Its headers are the STOMP frame's (python-zocalo's purge keeps them all), its queue
    named with the broker's prefix; on ActiveMQ that prefix is ours, elsewhere none."""
    queue = broker.queue("theirs")
    broker.client.declare_queue(queue)
    named = f"{broker.stomp_prefix}.{queue}" if broker.stomp_prefix else queue
    header = {
        "content-length": "9",
        "destination": f"/queue/DLQ.{named}",
        "dlqDeliveryFailureCause": "java.lang.Throwable: poison ack",
        "expires": "0",
        "message-id": "ID:host-40000-1634000000000-4:1:1:1:1",
        "original-destination": f"/queue/{named}",
        "persistent": "true",
        "priority": "4",
        "subscription": "1",
        "timestamp": "1634000000123",
        "workflows-recipe": "True",
    }
    path = tmp_path / "msg-20211012-015320-123-ID_host"
    path.write_text(json.dumps({"exported": {}, "header": header, "message": {"n": 1}}))
    result = run(dlq_reinject, "-t", broker.url, "--remove", str(path))
    assert result.exit_code == 0, result.output
    assert f"to queue '{queue}' (file removed)" in result.stdout
    (delivery,) = broker.take_all(queue)
    assert json.loads(delivery.body) == {"n": 1}
    assert (delivery.headers["workflows-recipe"], delivery.headers["dlq-reinjected"]) == (
        "True",
        "True",
    )
    assert not {"persistent", "priority", "dlqDeliveryFailureCause"} & set(delivery.headers)


def test_reinject_refuses_a_bad_file_and_sends_nothing(broker, run, tmp_path):
    queue = broker.queue("target")
    broker.client.declare_queue(queue)
    good = tmp_path / "good"
    good.write_text(json.dumps({"header": {"zocalo-dlq-queue": queue}, "message": {"n": 1}}))
    for bad_text, expected in [("{", "invalid JSON"), ('{"header": {}}', 'no "message"')]:
        bad = tmp_path / "bad"
        bad.write_text(bad_text)
        result = run(dlq_reinject, "-t", broker.url, "--remove", str(good), str(bad))
        assert result.exit_code == 1
        line = one_error_line(result.output)
        assert line.startswith(f"Error: {bad}: not a dead-letter file") and expected in line
    missing = run(dlq_reinject, "-t", broker.url, str(good), str(tmp_path / "gone"))
    assert one_error_line(missing.output) == f"Error: {tmp_path / 'gone'}: no such file"
    assert good.exists()
    assert broker.take_all(queue) == [], "nothing was sent"


def test_reinject_without_files_is_a_usage_error(sqlite_broker, run):
    result = run(dlq_reinject, "-t", sqlite_broker, input="")
    assert result.exit_code == 2 and "No DLQ message files given." in result.output
