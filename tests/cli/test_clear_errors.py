"""Bad input to the commands: one clear line and a non-zero exit, never a traceback, and
never the broker password."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from zocalo.cli.go import command as go
from zocalo.cli.monitor import command as monitor
from zocalo.cli.queues import command as queues
from zocalo.cli.shutdown import command as shutdown
from zocalo.transport import create_transport

SECRET = "Pw-s3cret"

#: URLs a user might type, each wrong in its own way, each with a password to hide.
BAD_URLS = {
    "unknown scheme": (f"amqq://guest:{SECRET}@127.0.0.1/", "unknown transport scheme"),
    "unknown option": (f"amqp://guest:{SECRET}@127.0.0.1/?hearbeat=5", "unknown option"),
    "non-numeric port": (f"amqp://guest:{SECRET}@127.0.0.1:abc/", "malformed"),
    "bad heartbeat": (f"amqp://guest:{SECRET}@127.0.0.1/?heartbeat=abc", "whole number"),
    "malformed IPv6 host": (f"amqp://guest:{SECRET}@[::1/", "Invalid IPv6 URL"),
    "bad cluster node": (f"amqp://guest:{SECRET}@127.0.0.1/?hosts=h:x", "'h:x'"),
    "missing cafile": (
        f"amqps://guest:{SECRET}@127.0.0.1/?cafile=/no/such/ca.pem",
        "/no/such/ca.pem does not exist",
    ),
    "sqlite lease": ("sqlite:///{tmp}/broker.db?visibility_timeout=-1", "must be at least 1"),
    "not a URL": (f"amqp:/guest:{SECRET}@127.0.0.1", "neither a URL"),
}


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize(("url", "expected"), BAD_URLS.values(), ids=BAD_URLS.keys())
@pytest.mark.parametrize(
    ("command", "arguments"),
    [(queues, []), (go, ["-n"]), (shutdown, ["--all"]), (monitor, ["--once", "0"])],
    ids=["queues", "go", "shutdown", "monitor"],
)
def test_a_bad_url_is_one_line_without_the_password(command, arguments, url, expected, tmp_path):
    url = url.format(tmp=tmp_path)
    result = CliRunner().invoke(command, [*arguments, "-t", url], catch_exceptions=False)
    assert result.exit_code in (1, 2), result.output
    assert expected in one_error_line(result.output)


@pytest.mark.rabbitmq
def test_the_monitor_title_hides_the_password(rabbitmq_vhost_url):
    result = CliRunner().invoke(
        monitor,
        ["--once", "0.2", "-t", rabbitmq_vhost_url],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    parts = urlsplit(rabbitmq_vhost_url)
    assert f"zocalo monitor: amqp://guest:***@{parts.hostname}:{parts.port}/" in result.output
    assert f"guest:{parts.password}@" not in result.output


@pytest.mark.rabbitmq
def test_a_wrong_password_is_one_line_from_zocalo_service(rabbitmq_vhost_url):
    parts = urlsplit(rabbitmq_vhost_url)
    url = f"amqp://guest:{SECRET}@{parts.hostname}:{parts.port}{parts.path}"
    finished = subprocess.run(
        [sys.executable, "-m", "zocalo.cli.service", "-s", "demo.FindSpots", "-t", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 1
    assert finished.stdout == ""
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert "refused the credentials" in lines[0]
    assert SECRET not in finished.stderr


def test_a_send_the_broker_does_not_confirm_in_time_is_one_line(tmp_path):
    """A stuck broker (here: another connection holding the file's write lock, as a
    stopped process would) times out the send: zocalo.go says so at once, in one line,
    and exits 1 once it has let go."""
    url = f"sqlite:///{tmp_path}/broker.db"
    with create_transport(url) as consumer:
        consumer.subscribe("stuck", lambda delivery: None)  # a queue the file knows
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"1": {"queue": "stuck"}, "start": [[1, {}]]}))
    timeout = ["--timeout", "0.5"]
    holder = sqlite3.connect(tmp_path / "broker.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen(
        [sys.executable, "-m", "zocalo.cli.go", "-f", str(recipe), "--direct", *timeout, "-t", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr])
    reader.start()
    try:
        first = lines.get(timeout=60)  # printed while the broker is still stuck
    finally:
        holder.rollback()
        holder.close()
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    reader.join(10)
    rest = [lines.get_nowait() for _ in range(lines.qsize())]
    assert process.returncode == 1
    assert first.startswith("Error: the broker did not confirm the 1 message(s) to stuck")
    assert "within 0.5 s" in first
    assert rest == [], "one line, no traceback"


def test_demo_refuses_zero_collections_in_one_line():
    from zocalo.cli.demo import command as demo

    result = CliRunner().invoke(demo, ["--collections", "0"], catch_exceptions=False)
    assert result.exit_code == 2
    assert "--collections" in one_error_line(result.output)


def test_a_recipe_step_without_queue_is_refused_and_nothing_is_sent(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/broker.db"
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"1": {"parameters": {"x": 1}}, "start": [[1, {}]]}))
    for mode in (["--direct"], ["-n"]):
        result = CliRunner().invoke(
            go, ["-f", str(recipe), *mode, "-t", url], catch_exceptions=False
        )
        assert result.exit_code == 2, result.output
        line = one_error_line(result.output)
        assert "step 1 has neither 'queue' nor 'topic'" in line
        assert "started" not in result.output and "submitted" not in result.output
    with create_transport(url) as broker:
        assert broker.queue_stats() == []


@pytest.mark.rabbitmq
def test_a_thousand_starts_to_a_missing_rabbitmq_queue_are_one_sentence(
    rabbitmq_vhost_url, tmp_path
):
    recipe = tmp_path / "recipe.json"
    missing = f"missing.{os.getpid()}"
    recipe.write_text(
        json.dumps({"1": {"queue": missing}, "start": [[1, {"n": n}] for n in range(1000)]})
    )
    result = CliRunner().invoke(
        go, ["-f", str(recipe), "--direct", "-t", rabbitmq_vhost_url], catch_exceptions=False
    )
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert f"queue {missing!r} cannot take 1000 messages: the queue does not exist" in line
    assert line.count("NO_ROUTE") == 1
    assert "starting its service" in line and "zocalo.configure_rabbitmq" in line
