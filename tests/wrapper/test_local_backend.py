"""The local backend on its own: jobs as process trees of this host, in Slurm's states."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from local_jobs import group_alive, kill_local_jobs
from zocalo.wrapper.backends.base import JobRefused, JobRequest, JobState
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


def script_pid(folder: Path) -> int:
    """The pid (and process group) of the job's script, as its process wrote it."""
    return json.loads((folder / "script.json").read_text())["pid"]


def job_folders(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.name.isdigit())


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
    while group_alive(script_pid(folder)):
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
    while group_alive(script_pid(folder)):
        assert time.monotonic() < deadline, "the script of a NODE_FAIL job still runs"
        threading.Event().wait(0.05)


def test_an_ended_job_is_forgotten_when_asked_and_its_id_is_never_given_again(backend, tmp_path):
    """The service forgets a job once its end is recorded: the folder goes, and with it
    the comment's index entry; a running job, or one asked for under another comment,
    stays. Ids go on counting (a removed job's id is not reused)."""
    root = tmp_path / "jobs"
    running = backend.submit(request(tmp_path, "sleep 60", comment="running"))
    done = backend.submit(request(tmp_path, "true", comment="done"))
    wait_for(backend, done)
    wait_for(backend, running, lambda state: state.state == "RUNNING")
    assert not backend.forget(running, "running"), "a running job is never removed"
    assert not backend.forget(done, "another job's comment")
    assert backend.find("done") == done
    assert backend.forget(done, "done")
    assert job_folders(root) == [str(running)]
    assert (backend.find("done"), backend.state(done)) == (None, None)
    backend.cancel(running)
    wait_for(backend, running)
    assert backend.forget(running, "running")
    assert job_folders(root) == [] and list((root / "by-comment").iterdir()) == []
    assert LocalBackend(root).submit(request(tmp_path, "true")) == done + 1


def test_find_reads_the_comment_index_and_scans_no_folder(backend, tmp_path):
    job_id = backend.submit(request(tmp_path, "true", comment="indexed"))
    assert backend.find("indexed") == job_id
    for entry in (tmp_path / "jobs" / "by-comment").iterdir():
        entry.unlink()
    assert backend.find("indexed") is None, "found by reading every job's folder"


def test_a_runner_starting_after_the_job_was_given_up_runs_nothing(tmp_path):
    """The backend concludes NODE_FAIL when no runner came within the grace; a runner that
    starts later must not run the script (the end was reported already)."""
    root = tmp_path / "jobs"
    backend = LocalBackend(root, start_grace=0.3)
    backend.runner_command = ["true"]  # a runner that never gets going
    job_id = backend.submit(request(tmp_path, f"touch {tmp_path}/ran"))
    state = wait_for(backend, job_id)
    assert (state.state, state.reason) == ("NODE_FAIL", "the job's runner did not start")
    late = subprocess.run(
        [sys.executable, "-m", "zocalo.wrapper.backends.local_job", str(root / str(job_id))],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert late.returncode == 0, late.stderr
    assert "given up" in late.stderr
    assert not (tmp_path / "ran").exists(), "the script ran after its job was reported lost"
    assert backend.state(job_id) == state


def test_a_runner_killed_as_its_script_starts_leaves_a_script_that_is_found_and_stopped(
    backend, tmp_path
):
    """The runner is SIGKILLed at the script's first line (by the script): the script's
    process group was on disk before that line ran (its own process wrote it before it
    executed the script), so the job is NODE_FAIL and its script is stopped. (The script
    notes its pid and group before it kills the runner.) (Five jobs:
    a runner that recorded the script after starting it loses the race to the kill in
    most of them.)"""
    jobs = {}
    for number in range(5):
        out = tmp_path / f"out{number}.txt"
        script = (
            f"read -r _ _ _ _ group _ < /proc/$$/stat; echo $$ $group > {out}; "
            "kill -KILL $PPID; exec sleep 60"
        )
        jobs[backend.submit(request(tmp_path, script))] = out
    for job_id, out in jobs.items():
        assert wait_for(backend, job_id).state == "NODE_FAIL"
        pid, group = (int(n) for n in out.read_text().split())
        assert script_pid(tmp_path / "jobs" / str(job_id)) == pid == group
        deadline = time.monotonic() + DEADLINE
        while group_alive(group):
            assert time.monotonic() < deadline, "the script of a lost runner still runs"
            threading.Event().wait(0.05)


def test_a_runner_that_cannot_be_started_leaves_no_job_and_is_refused(backend, tmp_path):
    backend.runner_command = [str(tmp_path / "no-such-runner")]
    with pytest.raises(JobRefused, match="cannot start a local job: No such file"):
        backend.submit(request(tmp_path, "true", comment="never"))
    assert job_folders(tmp_path / "jobs") == []
    assert backend.find("never") is None


OUT_OF_DESCRIPTORS = """
import os, resource, sys
from zocalo.wrapper.backends.base import BackendUnreachable, JobRequest, JobRefused
from zocalo.wrapper.backends.local import LocalBackend
backend = LocalBackend(sys.argv[1])
job = JobRequest("#!/bin/sh\\ntrue\\n", "fds", sys.argv[2], sys.argv[2] + "/o", sys.argv[2] + "/e",
                 comment="busy")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
for descriptor in held[-3:]:  # enough to write the job's folder, not to start its runner
    os.close(descriptor)
try:
    print("submitted", backend.submit(job))
except BackendUnreachable as error:
    print("unreachable:", error)
except JobRefused as error:
    print("refused:", error)
"""


def test_a_runner_that_cannot_start_for_now_leaves_no_job_and_the_backend_is_unreachable(
    tmp_path,
):
    """EMFILE (likewise EAGAIN, ENOMEM) passes: the service waits and tries again, as when
    Slurm is unreachable, rather than dead-lettering the step."""
    root, work = tmp_path / "jobs", tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS, str(root), str(work)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert run.stdout.strip() == "unreachable: cannot start a local job: Too many open files", (
        run.stderr
    )
    assert job_folders(root) == []
    assert LocalBackend(root).find("busy") is None


def test_with_max_jobs_further_jobs_wait_pending_and_can_be_cancelled_meanwhile(tmp_path):
    root = tmp_path / "jobs"
    backend = LocalBackend(root, max_jobs=1)
    try:
        first = backend.submit(
            request(tmp_path, f"while [ ! -e {tmp_path}/release ]; do sleep 0.05; done")
        )
        wait_for(backend, first, lambda state: state.state == "RUNNING")
        second = backend.submit(request(tmp_path, f"touch {tmp_path}/second-ran"))
        third = backend.submit(request(tmp_path, f"touch {tmp_path}/third-ran"))
        for job_id in (second, third):
            log = root / str(job_id) / "runner.log"
            deadline = time.monotonic() + DEADLINE
            while "waiting for one of 1 job slots" not in log.read_text():
                assert time.monotonic() < deadline, f"job {job_id} did not wait for a slot"
                threading.Event().wait(0.05)
            assert backend.state(job_id) == JobState(job_id, "PENDING")
        backend.cancel(third)
        assert wait_for(backend, third).state == "CANCELLED"
        assert not (tmp_path / "second-ran").exists()
        (tmp_path / "release").touch()
        assert wait_for(backend, first).state == "COMPLETED"
        assert wait_for(backend, second).state == "COMPLETED"
        assert (tmp_path / "second-ran").exists() and not (tmp_path / "third-ran").exists()
    finally:
        kill_local_jobs(root)
