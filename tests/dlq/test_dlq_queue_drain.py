"""zocalo.queue_drain SOURCE DEST: every message moved with one atomic publish-and-ack, on
the embedded broker, on RabbitMQ and on ActiveMQ; nothing lost when it stops, fails or is
killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from dlq_helpers import one_error_line

from zocalo.cli.queue_drain import command as queue_drain
from zocalo.dlq.listing import queue_listing
from zocalo.recipe import Recipe, wire
from zocalo.transport import Outgoing


def drain_args(broker, source: str, dest: str, *more: str) -> list[str]:
    return ["-t", broker.url, source, dest, "--wait", "0", "--stop", "0.5", *more]


def test_drain_moves_every_message_with_its_headers(broker, run):
    source, dest = broker.queue("source"), broker.queue("dest")
    client = broker.client
    client.declare_queue(source)
    client.declare_queue(dest)
    # ActiveMQ stamps every message with a timestamp of its own (a sender may not)
    stamp = {} if broker.kind == "stomp" else {"timestamp": "1"}
    for n in range(3):
        client.send(source, f'{{"n": {n}}}', headers={"mine": n, **stamp})
    result = run(queue_drain, *drain_args(broker, source, dest))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"Reading messages from {source}", f"Writing messages to {dest}"]
    assert "   3 message(s) drained in " in result.stdout
    assert lines[-1].startswith("3 message(s) drained, no message seen for ")
    moved = broker.take_all(dest)
    assert [json.loads(d.body)["n"] for d in moved] == [0, 1, 2]
    assert [d.headers["mine"] for d in moved] == [0, 1, 2]
    assert all("timestamp" not in d.headers for d in moved), "python-zocalo drops it"
    assert broker.take_all(source) == []


def test_dest_dot_sends_each_recipe_message_to_its_own_steps_queue(broker, run):
    source, first, second = broker.queue("held"), broker.queue("first"), broker.queue("second")
    recipe = Recipe({"1": {"queue": first, "output": 2}, "2": {"queue": second}, "start": [[1, 0]]})
    for queue in (source, first, second):
        broker.client.declare_queue(queue)
    for pointer, path in ((1, []), (2, [1])):
        body = wire.encode(recipe, pointer, path, {"ID": f"job-{pointer}"}, pointer)
        broker.client.send(source, body, headers={"workflows-recipe": True})
    result = run(queue_drain, *drain_args(broker, source, "."))
    assert result.exit_code == 0, result.output
    assert "Writing messages to automatically determined destinations" in result.stdout
    assert f"Recipe ID:    job-1\nTarget Queue: {first}" in result.stdout
    assert f"Recipe ID:    job-2\nTarget Queue: {second}" in result.stdout
    assert [wire.decode(d.body, d.headers, "").payload for d in broker.take_all(first)] == [1]
    assert [wire.decode(d.body, d.headers, "").payload for d in broker.take_all(second)] == [2]


def test_dest_dot_stops_at_a_message_without_a_step_and_leaves_it_queued(broker, run):
    source = broker.queue("plain")
    broker.client.declare_queue(source)
    broker.client.send(source, b'{"not": "a recipe message"}')
    result = run(queue_drain, *drain_args(broker, source, "."))
    assert result.exit_code == 1
    assert "it stays where it is (give DEST)" in one_error_line(result.output)
    assert [d.body for d in broker.take_all(source)] == [b'{"not": "a recipe message"}']


def test_a_source_the_broker_lacks_is_refused_and_not_created(broker, run):
    missing, dest = broker.queue("missing"), broker.queue("dest")
    result = run(queue_drain, *drain_args(broker, missing, dest))
    assert result.exit_code == 1
    assert f"no queue {missing} on " in one_error_line(result.output)
    with queue_listing(broker.url, broker.client) as listing:
        assert missing not in listing.queues()


@pytest.mark.rabbitmq
def test_a_destination_rabbitmq_lacks_leaves_the_message_in_its_source(
    make_broker, rabbitmq_vhost_url, run
):
    broker = make_broker(rabbitmq_vhost_url)
    source, nowhere = broker.queue("source"), broker.queue("nowhere")
    broker.client.declare_queue(source)
    broker.client.send(source, b"stays")
    result = run(queue_drain, *drain_args(broker, source, nowhere))
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert nowhere in line and "the queue does not exist" in line
    assert [d.body for d in broker.take_all(source)] == [b"stays"]


def start_drain(broker, source: str, dest: str, *more: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "zocalo.cli.queue_drain", *drain_args(broker, source, dest)]
    return subprocess.Popen(
        [*command, *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_ctrl_c_stops_after_the_message_in_hand(sqlite_broker, make_broker):
    broker = make_broker(sqlite_broker)
    source, dest = broker.queue("source"), broker.queue("dest")
    broker.client.send(source, b"1")
    process = start_drain(broker, source, dest, "--stop", "0")
    try:
        assert process.stdout is not None
        while "message(s) drained in" not in process.stdout.readline():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
        os.killpg(process.pid, signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert process.returncode == 1
    assert "Cancelling, 1 message(s) drained, 0 message(s) unprocessed" in errors
    assert [d.body for d in broker.take_all(dest)] == [b"1"]


@pytest.mark.slow
def test_a_drain_killed_mid_way_loses_nothing(broker, wait_until, make_broker):
    source, dest = broker.queue("source"), broker.queue("dest")
    broker.client.declare_queue(source)
    broker.client.declare_queue(dest)
    bodies = [str(n).encode() for n in range(600)]
    broker.client.publish([Outgoing(source, body) for body in bodies]).result(60)
    process = start_drain(broker, source, dest)
    try:
        assert process.stdout is not None
        drained = 0
        while drained < 30:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "the drain ended"
            drained += "drained in" in line
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    after = make_broker(broker.url)
    moved = [d.body for d in after.take_all(dest)]
    left = [d.body for d in after.take_all(source)]
    assert 30 <= len(moved) < len(bodies), "killed mid-way"
    assert set(moved) | set(left) == set(bodies), "every message is in one queue or the other"
