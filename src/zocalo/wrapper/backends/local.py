"""Jobs on this host: the cluster submission service without a cluster (sites, the demo).

Each job is a folder under the backend's root (0700), numbered from 1::

    <root>/<id>/script      the batch script, as Slurm would run it
    <root>/<id>/job.json    what to run it with: directory, output files, environment,
                            time limit, and the comment the service finds it by
    <root>/<id>/runner.json the job runner's process (pid, start time) and the script's
    <root>/<id>/cancel      written by :meth:`LocalBackend.cancel`
    <root>/<id>/end.json    how it ended: state, exit code, signal (written last)

A job runs under its own small runner process (:mod:`.local_job`), in a session
of its own, so it outlives the service that submitted it (a restart, a kill -9):
the runner waits for the script, enforces the time limit and writes ``end.json``,
and any service reading the folder later learns the end, as it would from Slurm.
States are Slurm's: PENDING (the script not started yet), RUNNING, COMPLETED, FAILED,
CANCELLED, TIMEOUT. A runner that vanished without writing the end (killed with
SIGKILL, the host rebooted) makes the job NODE_FAIL, as Slurm says of a lost node;
as on a lost node, the job's script is then stopped too (it must not run on, and
report, after its end was reported).

The script's ``PATH`` starts with the folder of the service's own Python, so
``zocalo.wrap`` in a job is the service's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zocalo.wrapper.backends.base import BackendError, JobBackend, JobRefused, JobRequest, JobState

#: Seconds a job may stay without a runner record before it counts as lost.
START_GRACE = 30.0
JOB_FILE = "job.json"
RUNNER_FILE = "runner.json"
END_FILE = "end.json"
CANCEL_FILE = "cancel"
SCRIPT_FILE = "script"


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """``path`` holds ``data`` (JSON) whole or not at all, on disk before this returns."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump(data, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if there is none (yet)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_start(pid: int) -> str | None:
    """The process's start time (``/proc``), to tell it from a later one of the same pid;
    None when no such process runs (a zombie counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else ""


def stop_leftover_script(runner: Mapping[str, Any]) -> None:
    """SIGKILL the process group of the script a vanished runner (``runner.json``) left.

    The script runs in the runner's session (the runner's pid), in a group of its own
    (the script's pid). A group whose leader lives in another session is not the
    script's: its pid was taken again by then, and that group is left alone.
    """
    script = runner.get("script_pid")
    if not isinstance(script, int) or isinstance(script, bool) or script <= 0:
        return
    try:
        fields = Path(f"/proc/{script}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        fields = []  # the leader ended; its group (if any is left) keeps the pid from reuse
    if len(fields) > 3 and fields[3] != str(runner.get("pid")):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(script, signal.SIGKILL)


class LocalBackend(JobBackend):
    """Runs each job as a process tree of this host (see the module docstring)."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.name = f"this host (local jobs in {self.root})"
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise BackendError(
                f"cannot create the local job folder {self.root}: {error.strerror}"
            ) from None
        #: Runners this process started: polled so that none stays a zombie.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _folder(self, job_id: int) -> Path:
        return self.root / str(job_id)

    def _new_folder(self) -> tuple[int, Path]:
        numbers = [int(entry.name) for entry in self.root.iterdir() if entry.name.isdigit()]
        job_id = max(numbers, default=0) + 1
        while True:
            folder = self._folder(job_id)
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:  # another service took it
                job_id += 1
                continue
            return job_id, folder

    def submit(self, request: JobRequest) -> int:
        try:
            Path(request.working_directory).mkdir(parents=True, exist_ok=True)
            job_id, folder = self._new_folder()
            script = folder / SCRIPT_FILE
            descriptor = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(descriptor, "w") as stream:
                stream.write(request.script)
            write_atomically(folder / JOB_FILE, _job_description(request))
            with open(folder / "runner.log", "wb") as log:
                runner = subprocess.Popen(
                    [sys.executable, "-m", "zocalo.wrapper.backends.local_job", str(folder)],
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,  # outlives the service; its own signals
                )
        except OSError as error:
            raise JobRefused(f"cannot start a local job: {error.strerror or error}") from None
        self._children[job_id] = runner
        return job_id

    def _reap(self) -> None:
        for job_id, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(job_id, None)

    def states(self, job_ids: Iterable[int]) -> dict[int, JobState | None]:
        self._reap()
        return {job_id: self._state(job_id) for job_id in job_ids}

    def _state(self, job_id: int) -> JobState | None:
        folder = self._folder(job_id)
        job = read_json(folder / JOB_FILE)
        if job is None:
            return None
        end = read_json(folder / END_FILE)
        if end is not None:
            return _ended(job_id, end)
        runner = read_json(folder / RUNNER_FILE)
        if runner is None:
            if time.time() - float(job.get("submitted_at", 0)) < START_GRACE:
                return JobState(job_id, "PENDING")
        elif process_start(int(runner["pid"])) == runner.get("start"):
            return JobState(job_id, "RUNNING" if "script_pid" in runner else "PENDING")
        end = read_json(folder / END_FILE)  # (it may have ended since the first look)
        if end is not None:
            return _ended(job_id, end)
        if runner is not None:  # an end is reported: nothing of the job may run on
            stop_leftover_script(runner)
        if (folder / CANCEL_FILE).exists():
            return JobState(job_id, "CANCELLED", reason="cancelled")
        return JobState(job_id, "NODE_FAIL", reason="the job's runner ended without a word")

    def cancel(self, job_id: int) -> None:
        folder = self._folder(job_id)
        if read_json(folder / JOB_FILE) is None or (folder / END_FILE).exists():
            return
        try:
            (folder / CANCEL_FILE).touch(mode=0o600)
        except OSError as error:
            raise BackendError(f"cannot cancel local job {job_id}: {error.strerror}") from None
        runner = read_json(folder / RUNNER_FILE)
        if runner is None:
            return  # the runner reads the mark before it starts the script
        if process_start(int(runner["pid"])) == runner.get("start"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(runner["pid"]), signal.SIGTERM)  # it stops the script's group
            return
        stop_leftover_script(runner)  # no runner to do it

    def find(self, comment: str) -> int | None:
        for entry in self.root.iterdir():
            job = read_json(entry / JOB_FILE) if entry.name.isdigit() else None
            if job is not None and job.get("comment") == comment:
                return int(entry.name)
        return None


def _job_description(request: JobRequest) -> dict[str, Any]:
    description = asdict(request)
    del description["script"]
    environment = dict(request.environment)
    here = str(Path(sys.executable).parent)
    environment["PATH"] = os.pathsep.join(
        [here, *[part for part in environment.get("PATH", os.defpath).split(os.pathsep) if part]]
    )
    description["environment"] = environment
    description["submitted_at"] = time.time()
    return description


def _ended(job_id: int, end: Mapping[str, Any]) -> JobState:
    exit_code, signal_number = end.get("exit_code"), end.get("signal")
    return JobState(
        job_id,
        str(end.get("state", "FAILED")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        signal=signal_number if isinstance(signal_number, int) else None,
        reason=end.get("reason"),
    )
