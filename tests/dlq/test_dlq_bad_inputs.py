"""The dead-letter tools when things are wrong: a broker that is down, a management API
that cannot be reached, a purge killed half-way. One clear line, and nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from dlq_helpers import one_error_line

from zocalo.cli.dlq_check import command as dlq_check
from zocalo.cli.dlq_purge import command as dlq_purge
from zocalo.cli.dlq_reinject import command as dlq_reinject
from zocalo.cli.queue_drain import command as queue_drain
from zocalo.transport import dlq_name

SECRET = "s3cret-pw"
UNREACHABLE_API = f"http://guest:{SECRET}@127.0.0.1:1"


def broken_url(kind: str, tmp_path) -> tuple[str, str]:
    """A broker URL that cannot be used, and what its error says."""
    if kind == "sqlite":
        (tmp_path / "a-file").write_text("")
        return f"sqlite:///{tmp_path}/a-file/broker.db", "cannot create broker file"
    if kind == "stomp":
        return f"stomp://zocalo:{SECRET}@127.0.0.1:1?prefix=zocalo", "cannot connect to ActiveMQ"
    return f"amqp://guest:{SECRET}@127.0.0.1:1/", "cannot connect to RabbitMQ"


@pytest.mark.parametrize("kind", ["sqlite", "rabbitmq", "stomp"])
def test_a_broker_that_is_down_is_one_line_from_every_tool(kind, run, tmp_path):
    """(No broker is contacted: the RabbitMQ and ActiveMQ URLs point at a closed port.)"""
    url, expected = broken_url(kind, tmp_path)
    letter = tmp_path / "letter"
    letter.write_text(json.dumps({"header": {"zocalo-dlq-queue": "q"}, "message": 1}))
    commands = [
        (dlq_purge, ["--location", str(tmp_path / "DLQ"), "q"]),
        (dlq_reinject, ["--remove", str(letter)]),
        (queue_drain, ["q", "elsewhere"]),
    ]
    if kind != "rabbitmq":  # RabbitMQ's check asks only the management API: below
        commands.append((dlq_check, []))
    for command, arguments in commands:
        result = run(command, "-t", url, *arguments)
        assert result.exit_code == 1, result.output
        line = one_error_line(result.output)
        assert expected in line and SECRET not in result.output
    assert letter.exists(), "kept: it was not sent"
    assert not (tmp_path / "DLQ").exists()


@pytest.mark.rabbitmq
def test_a_management_api_that_cannot_be_reached_is_one_line(
    make_broker, rabbitmq_vhost_url, run, tmp_path
):
    broker = make_broker(rabbitmq_vhost_url)
    queue = broker.queue("unlisted")
    broker.dead_letter(queue, [b"1"])
    for command, arguments in [
        (dlq_check, []),
        (dlq_purge, ["--location", str(tmp_path)]),  # every dlq.* queue: a listing is needed
        (dlq_purge, ["--location", str(tmp_path), queue]),  # does it exist? asked too
    ]:
        result = run(
            command, "-t", rabbitmq_vhost_url, "--management-url", UNREACHABLE_API, *arguments
        )
        assert result.exit_code == 1
        line = one_error_line(result.output)
        assert "cannot reach the RabbitMQ management API at http://127.0.0.1:1/api" in line
        assert "--management-url" in line and SECRET not in result.output
    assert [d.body for d in broker.take_all(dlq_name(queue))] == [b"1"], "nothing was taken"


def test_a_purge_location_that_cannot_be_written_leaves_the_message_queued(
    make_broker, sqlite_broker, run, tmp_path
):
    broker = make_broker(sqlite_broker)
    broker.dead_letter("q", [b"kept"])
    (tmp_path / "taken").write_text("")
    result = run(dlq_purge, "-t", sqlite_broker, "--location", str(tmp_path / "taken"), "q")
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert f"under {tmp_path / 'taken'}" in line and "it stays in its queue" in line
    broker = make_broker(sqlite_broker)
    assert [d.body for d in broker.take_all("dlq.q")] == [b"kept"], "not acknowledged"


@pytest.mark.slow
def test_a_purge_killed_mid_way_loses_nothing(make_broker, broker, tmp_path, wait_until):
    """kill -9 while files are being written: every message is in a file or back in its
    queue; a second purge completes the set, one file per message."""
    queue = broker.queue("killed")
    count = 1500
    bodies = [json.dumps({"n": n}).encode() for n in range(count)]
    broker.dead_letter(queue, bodies)
    location = tmp_path / "DLQ"
    command = [sys.executable, "-m", "zocalo.cli.dlq_purge", "-t", broker.url]
    command += ["--location", str(location), queue]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def files() -> int:
        return len(list(location.glob("*/msg-*")))

    try:
        wait_until(lambda: files() >= 50 or process.poll() is not None, "the purge to start")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    written = files()
    assert 0 < written < count, "killed mid-way"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    exported = [json.loads(path.read_text()) for path in location.glob("*/msg-*")]
    assert sorted(json.dumps(c["message"]) for c in exported) == sorted(b.decode() for b in bodies)
    deadline = time.monotonic() + 30
    left = make_broker(broker.url)
    while left.take_all(dlq_name(queue)):  # what was unacked comes back once reaped
        assert time.monotonic() < deadline, "messages kept coming back"
