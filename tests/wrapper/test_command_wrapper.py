"""CommandWrapper: runs the step's command, streams its output, reports what came of it."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from wrapping import RECIPE_ID

from zocalo.recipe.cancel import broadcast_cancel
from zocalo.wrapper.command import CommandWrapper
from zocalo.wrapper.wrap import run_wrapper

PYTHON = sys.executable


def wrap(live_step, parameters, payload=None):
    step = live_step(parameters, payload=payload)
    wrapper = CommandWrapper()
    run_wrapper(wrapper, step.transport, name="command", recipe_wrapper=step)
    return wrapper


def test_success_streams_each_line_with_the_recipe_id_and_reports(
    live_step, outputs, tmp_path, caplog
):
    script = (
        "import os, sys; print('spots', os.environ['SPOTS']); print('warn', file=sys.stderr); "
        "open('spots.txt', 'w').write('12')"
    )
    with caplog.at_level(logging.INFO, logger="zocalo.wrapper.command"):
        wrap(
            live_step,
            {
                "command": [PYTHON, "-c", script],
                "workingdir": str(tmp_path / "run"),
                "environment": {"SPOTS": 12},
                "output_files": ["spots.txt"],
            },
        )
    (report,) = outputs.wait("success")
    assert report["exit_code"] == 0 and report["timed_out"] is False
    assert report["stdout"] == "spots 12"
    assert report["stderr"] == "warn"
    assert report["workingdir"] == str(tmp_path / "run")
    assert report["output_files"] == [
        {"path": str(tmp_path / "run" / "spots.txt"), "exists": True, "size": 2}
    ]
    assert outputs.wait("completed") == [report]
    assert outputs.wait("result-individual-file") == [
        {"file_path": str(tmp_path / "run"), "file_name": "spots.txt", "file_type": "result"}
    ]
    assert outputs.wait("result-all-files")[0]["filelist"][0]["file_name"] == "spots.txt"
    assert outputs.payloads("failure") == []
    streamed = {r.getMessage(): r.recipe_ID for r in caplog.records}
    assert streamed["stdout: spots 12"] == RECIPE_ID
    assert streamed["stderr: warn"] == RECIPE_ID


def test_placeholders_come_from_the_payload_and_the_parameters(live_step, outputs, tmp_path):
    wrap(
        live_step,
        {"command": "echo {image} {threshold} {unknown}", "threshold": 0.5},
        payload={"image": "frame_7.cbf"},
    )
    assert outputs.wait("success")[0]["stdout"] == "frame_7.cbf 0.5 {unknown}"


def test_a_non_zero_exit_is_a_failure_with_the_tails_in_completed(live_step, outputs):
    lines = "; ".join(f"print({n})" for n in range(30))
    wrap(
        live_step,
        {"command": [PYTHON, "-c", f"{lines}; raise SystemExit(3)"], "tail_lines": 5},
    )
    assert outputs.wait("failure") == ["exited with status 3"]
    (report,) = outputs.wait("completed")
    assert report["exit_code"] == 3
    assert report["stdout"] == "25\n26\n27\n28\n29"
    assert outputs.payloads("success") == []


def test_a_missing_output_file_fails_the_run(live_step, outputs):
    wrap(live_step, {"command": ["true"], "output_files": ["never.txt"]})
    (reason,) = outputs.wait("failure")
    assert reason.startswith("finished, but left no ") and reason.endswith("never.txt")
    assert outputs.payloads("result-individual-file") == []


def test_a_timeout_stops_the_whole_process_group(live_step, outputs, tmp_path, wait_until):
    pid_file = tmp_path / "child.pid"
    # The shell starts a child that would outlive a kill of the shell alone.
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    wrap(live_step, {"command": ["sh", "-c", script], "timeout": 0.5})
    assert outputs.wait("failure") == ["timed out after 0.5 s and was stopped"]
    assert outputs.wait("completed")[0]["timed_out"] is True
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), "the child to be gone")


def test_stop_ends_the_program_and_reports_failure(live_step, outputs, tmp_path, wait_until):
    started = tmp_path / "started"
    step = live_step({"command": ["sh", "-c", f"touch {started}; exec sleep 60"]})
    wrapper = CommandWrapper()
    runner = threading.Thread(
        target=run_wrapper,
        args=(wrapper, step.transport),
        kwargs={"name": "command", "recipe_wrapper": step},
    )
    runner.start()
    wait_until(started.exists, "the command to start")
    wrapper.stop()
    runner.join(10)
    assert not runner.is_alive()
    (reason,) = outputs.wait("failure")
    assert reason.startswith("stopped before it finished")


def test_bad_parameters_fail_in_one_clear_line(live_step, outputs):
    wrap(live_step, {"command": []})
    wrap(live_step, {"command": ["true"], "timeout": "soon"})
    wrap(live_step, {"command": ["/nonexistent/program"]})
    reasons = outputs.wait("failure", 3)
    assert reasons[0].startswith("parameter 'command' must be a non-empty list")
    assert reasons[1] == "parameter 'timeout' must be seconds, not 'soon'"
    assert reasons[2] == "cannot run '/nonexistent/program': No such file or directory"
    assert len(outputs.wait("completed", 3)) == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has ended all the same.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[-1][0] != "Z"


def test_cancelling_the_recipe_stops_the_program_and_reports_nothing(
    live_step, outputs, client, tmp_path, wait_until
):
    started = tmp_path / "started"
    step = live_step({"command": ["sh", "-c", f"touch {started}; sleep 60"]})
    wrapper = CommandWrapper()
    runner = threading.Thread(
        target=run_wrapper,
        args=(wrapper, step.transport),
        kwargs={"name": "command", "recipe_wrapper": step},
    )
    runner.start()
    wait_until(started.exists, "the command to start")
    broadcast_cancel(client, "some-other-recipe")
    broadcast_cancel(client, RECIPE_ID)
    runner.join(10)
    assert not runner.is_alive()
    assert wrapper.result is not None and wrapper.result["stopped"] is True
    assert outputs.wait("starting") == ["Starting processing"]
    for channel in ("success", "failure", "completed"):
        assert outputs.payloads(channel) == []


def test_a_payload_cannot_replace_what_the_parameters_fix(live_step, outputs):
    """The payload is data from the step before: a key it shares with the parameters
    (here the program to run) keeps the recipe's value."""
    wrap(
        live_step,
        {"command": ["{tool}", "{image}"], "tool": "echo"},
        payload={"tool": "false", "image": "frame_7.cbf"},
    )
    assert outputs.wait("success")[0]["stdout"] == "frame_7.cbf"
