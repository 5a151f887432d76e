"""zocalo.wrap as a program: a recipe-wrapper file in, reports down the recipe, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from wrapping import RECIPE_ID, Outputs, recipe_body, wrapped_recipe

from zocalo.transport import create_transport

WRAP = [sys.executable, "-m", "zocalo.cli.wrap"]


@pytest.fixture
def broker(sqlite_broker):
    transport = create_transport(sqlite_broker)
    transport.connect()
    yield transport
    transport.close()


def recipe_wrapper_file(tmp_path: Path, parameters: dict) -> Path:
    path = tmp_path / "recipewrap.json"
    path.write_bytes(recipe_body(wrapped_recipe(parameters), {"image": "x"}))
    return path


def test_a_command_runs_and_its_outcome_goes_down_the_recipe(
    tmp_path, sqlite_broker, broker, collector
):
    outputs = Outputs(broker, collector)
    path = recipe_wrapper_file(tmp_path, {"command": ["echo", "{image}"]})
    done = subprocess.run(
        [*WRAP, "--wrap", "command", "--recipewrapper", str(path), "-t", sqlite_broker],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert outputs.wait("starting") == ["Starting processing"]
    assert outputs.wait("success")[0]["stdout"] == "x"
    assert outputs.wait("completed")[0]["exit_code"] == 0
    assert f"[{RECIPE_ID}:1] stdout: x" in done.stderr


def test_sigterm_stops_the_command_and_reports_failure(
    tmp_path, sqlite_broker, broker, collector, wait_until
):
    outputs = Outputs(broker, collector)
    started = tmp_path / "started"
    path = recipe_wrapper_file(tmp_path, {"command": ["sh", "-c", f"touch {started}; sleep 60"]})
    process = subprocess.Popen(
        [*WRAP, "--wrap", "command", "--recipewrapper", str(path), "-t", sqlite_broker],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(started.exists, "the command to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()
    (reason,) = outputs.wait("failure")
    assert reason.startswith("stopped before it finished")
    assert outputs.wait("completed")[0]["stopped"] is True


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        (
            ["--wrap", "nonesuch"],
            2,
            "Error: no wrapper 'nonesuch'; known wrappers: command, demo.integrate",
        ),
        (
            ["--wrap", "command", "--recipewrapper", "/nonexistent/rw.json"],
            1,
            "Error: recipe-wrapper file /nonexistent/rw.json: cannot be read "
            "(No such file or directory)",
        ),
    ],
)
def test_bad_input_is_one_line(arguments, status, message, sqlite_broker):
    done = subprocess.run(
        [*WRAP, *arguments, "-t", sqlite_broker], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == status
    assert done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr


def test_a_file_that_is_no_recipe_message_is_one_line(tmp_path, sqlite_broker):
    path = tmp_path / "rw.json"
    path.write_text(json.dumps({"recipe": {"1": {}}}))
    done = subprocess.run(
        [*WRAP, "--wrap", "command", "--recipewrapper", str(path), "-t", sqlite_broker],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert line.startswith(f"Error: recipe-wrapper file {path}: not a recipe message")
    assert "Traceback" not in done.stderr
