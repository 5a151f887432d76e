"""The local backend on its own: jobs as process trees of this host, in Slurm's states."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from local_jobs import group_alive, kill_local_jobs
from zocalo.wrapper.backends.base import JobRequest, JobState
from zocalo.wrapper.backends.local import LocalBackend

DEADLINE = 30.0


@pytest.fixture
def backend(tmp_path: Path):
    """A local backend; its jobs still running at the end are killed (they run in
    sessions of their own)."""
    local = LocalBackend(tmp_path / "jobs")
    yield local
    kill_local_jobs(tmp_path / "jobs")


def request(tmp_path: Path, script: str, **fields) -> JobRequest:
    return JobRequest(
        script=f"#!/bin/bash\n{script}\n",
        name="local-test",
        working_directory=str(tmp_path / "work"),
        standard_output=str(tmp_path / "work" / "out.txt"),
        standard_error=str(tmp_path / "work" / "err.txt"),
        environment={"PATH": "/usr/bin:/bin", "GREETING": "hello"},
        **fields,
    )


def wait_for(backend: LocalBackend, job_id: int, wanted=lambda s: s.ended) -> JobState:
    """The job's state once ``wanted`` holds (the backend announces nothing: it is read)."""
    deadline = time.monotonic() + DEADLINE
    pause = threading.Event()
    while True:
        state = backend.state(job_id)
        if state is not None and wanted(state):
            return state
        assert time.monotonic() < deadline, f"job {job_id}: {state}"
        pause.wait(0.05)


def test_a_job_runs_with_its_environment_and_ends_as_slurm_would_say(backend, tmp_path):
    job_id = backend.submit(request(tmp_path, 'echo "$GREETING from $(pwd)"; echo oops >&2'))
    state = wait_for(backend, job_id)
    assert state == JobState(job_id, "COMPLETED", 0, None, None)
    assert state.succeeded
    work = tmp_path / "work"
    assert (work / "out.txt").read_text() == f"hello from {work}\n"
    assert (work / "err.txt").read_text() == "oops\n"
    assert backend.find("no-such-comment") is None
    folder = tmp_path / "jobs" / str(job_id)
    assert (folder.stat().st_mode & 0o777, (folder / "job.json").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )


def test_a_job_past_its_time_limit_is_stopped_as_timeout(backend, tmp_path):
    """(A time limit in minutes: 0.02 is 1.2 s.)"""
    job_id = backend.submit(request(tmp_path, "sleep 60", time_limit=0.02))
    state = wait_for(backend, job_id)
    assert (state.state, state.signal) == ("TIMEOUT", signal.SIGTERM)
    assert not state.succeeded


def test_a_job_whose_runner_was_killed_is_node_fail(backend, tmp_path):
    """As Slurm says of a job whose node was lost: nobody saw how it ended."""
    job_id = backend.submit(request(tmp_path, "sleep 60", comment="lost-one"))
    assert backend.find("lost-one") == job_id
    folder = tmp_path / "jobs" / str(job_id)
    wait_for(backend, job_id, lambda state: state.state == "RUNNING")
    runner = json.loads((folder / "runner.json").read_text())
    os.kill(runner["pid"], signal.SIGKILL)
    state = wait_for(backend, job_id)
    assert state.state == "NODE_FAIL"
    backend.cancel(job_id)  # the script left behind is stopped all the same
    deadline = time.monotonic() + DEADLINE
    while group_alive(runner["script_pid"]):
        assert time.monotonic() < deadline, "the script still runs"
        threading.Event().wait(0.05)


def test_a_job_another_backend_submitted_is_followed_and_cancelled(backend, tmp_path):
    """A second backend on the same folder (a restarted service) knows the first's jobs."""
    job_id = backend.submit(request(tmp_path, "sleep 60"))
    wait_for(backend, job_id, lambda state: state.state == "RUNNING")
    restarted = LocalBackend(tmp_path / "jobs")
    assert restarted.state(job_id) == JobState(job_id, "RUNNING")
    restarted.cancel(job_id)
    state = wait_for(restarted, job_id)
    assert (state.state, state.signal) == ("CANCELLED", signal.SIGTERM)
    assert restarted.state(987654) is None
    assert backend.submit(request(tmp_path, "true")) == job_id + 1


def test_a_node_fail_job_leaves_no_script_running(backend, tmp_path):
    """NODE_FAIL is an end: the recipe goes on down its failure branch, so the script the
    lost runner left behind must not go on (and report a success later) unseen."""
    job_id = backend.submit(request(tmp_path, "sleep 60"))
    folder = tmp_path / "jobs" / str(job_id)
    wait_for(backend, job_id, lambda state: state.state == "RUNNING")
    runner = json.loads((folder / "runner.json").read_text())
    os.kill(runner["pid"], signal.SIGKILL)
    assert wait_for(backend, job_id).state == "NODE_FAIL"
    deadline = time.monotonic() + DEADLINE
    while group_alive(runner["script_pid"]):
        assert time.monotonic() < deadline, "the script of a NODE_FAIL job still runs"
        threading.Event().wait(0.05)
