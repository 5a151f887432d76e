"""Jobs on this host: the cluster submission service without a cluster (sites, the demo).

Each job is a folder under the backend's root (0700); ids count up from 1 and are
never given twice (``<root>/last-id``, under a lock), so a removed job's id is not
reused::

    <root>/last-id          the last job id given
    <root>/by-comment/<h>   the id of the job whose comment hashes to ``h`` (:meth:`find`)
    <root>/<id>/script      the batch script, as Slurm would run it
    <root>/<id>/job.json    what to run it with: directory, output files, environment,
                            time limit, and the comment the service finds it by
    <root>/<id>/runner.json who owns the job: its runner (pid, start time), or
                            ``{"lost": ...}`` from a backend that gave up waiting for one.
                            Created once (a hard link), so exactly one of them wins
    <root>/<id>/script.json the script's pid (= its process group), written by the
                            script's own process before it executes the script
    <root>/<id>/cancel      written by :meth:`LocalBackend.cancel`
    <root>/<id>/end.json    how it ended: state, exit code, signal (written last)

A job runs under its own small runner process (:mod:`.local_job`), in a session
of its own, so it outlives the service that submitted it (a restart, a kill -9):
the runner waits for the script, enforces the time limit and writes ``end.json``,
and any service reading the folder later learns the end, as it would from Slurm.
States are Slurm's: PENDING (the script not started yet), RUNNING, COMPLETED, FAILED,
CANCELLED, TIMEOUT. A runner that vanished without writing the end (killed with
SIGKILL, the host rebooted), or that did not start within ``start_grace`` seconds,
makes the job NODE_FAIL, as Slurm says of a lost node; as on a lost node, the job's
script is then stopped too, and a runner that starts after that runs nothing (it
must not run on, and report, after its end was reported).

Folders go when the service says so (:meth:`LocalBackend.forget`): it does once the
job's end is in its job record, committed, which is all a restarted service needs
to report the end again. A job that has not ended, or whose comment is not the one
given, is never removed.

Resources are Slurm's business: the local backend runs each job as it comes and
ignores cpus, tasks, nodes, memory, partition, preference and GPUs
(:data:`IGNORED`; the service says so once when it starts). The time limit holds, and
``max_jobs`` (the ``cluster`` section's) bounds how many jobs run at once: the others
wait, PENDING, their runners queued for a slot (:mod:`.local_job`).

The script's ``PATH`` starts with the folder of the service's own Python, so
``zocalo.wrap`` in a job is the service's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zocalo.private_files import create_private_once, replace_private
from zocalo.wrapper.backends.base import (
    BackendError,
    BackendUnreachable,
    JobBackend,
    JobRefused,
    JobRequest,
    JobState,
)

#: Seconds a job may stay without a runner before it counts as lost (NODE_FAIL).
START_GRACE = 30.0
JOB_FILE = "job.json"
RUNNER_FILE = "runner.json"
SCRIPT_PID_FILE = "script.json"
END_FILE = "end.json"
CANCEL_FILE = "cancel"
SCRIPT_FILE = "script"
LAST_ID_FILE = "last-id"
BY_COMMENT = "by-comment"
#: What a :class:`JobRequest` may ask that this host does not enforce.
IGNORED = ("cpus_per_task", "tasks", "nodes", "memory_per_node", "partition", "prefer", "gpus")
#: Errors of starting a job that pass (no process or memory to spare, no file
#: descriptor, a full disk): the backend is "unreachable" for now, not refusing.
TRANSIENT_ERRORS = frozenset(
    {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT}
)


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """``path`` holds ``data`` (JSON) whole or not at all, on disk before this returns."""
    replace_private(path, json.dumps(data).encode())


def create_once(path: Path, data: Mapping[str, Any]) -> bool:
    """Create ``path`` holding ``data`` (JSON) whole, unless it exists: whether this call
    created it (of two racing callers, exactly one does)."""
    return create_private_once(path, json.dumps(data).encode())


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


def _pid(record: Mapping[str, Any] | None, name: str = "pid") -> int | None:
    value = record.get(name) if record is not None else None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    return value


def runner_alive(runner: Mapping[str, Any] | None) -> bool:
    """Whether the runner ``runner.json`` names still runs (not a later process of its pid)."""
    pid = _pid(runner)
    return pid is not None and runner is not None and process_start(pid) == runner.get("start")


def stop_leftover_script(folder: Path, runner: Mapping[str, Any]) -> None:
    """SIGKILL the process group of the script a vanished runner (``runner.json``) left.

    The script runs in the runner's session (the runner's pid), in a group of its own
    (the script's pid, in ``script.json`` before the script began). A group whose
    leader lives in another session is not the script's: its pid was taken again by
    then, and that group is left alone.
    """
    script = _pid(read_json(folder / SCRIPT_PID_FILE))
    if script is None:
        return
    try:
        fields = Path(f"/proc/{script}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        fields = []  # the leader ended; its group (if any is left) keeps the pid from reuse
    if len(fields) > 3 and fields[3] != str(runner.get("pid")):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(script, signal.SIGKILL)


def comment_key(comment: str) -> str:
    """The file name under ``by-comment/`` of a comment (any text)."""
    return hashlib.sha256(comment.encode()).hexdigest()[:32]


class LocalBackend(JobBackend):
    """Runs each job as a process tree of this host (see the module docstring)."""

    kind = "local"
    ignored_fields = IGNORED

    def __init__(
        self, root: str | Path, *, start_grace: float = START_GRACE, max_jobs: int | None = None
    ) -> None:
        self.root = Path(root)
        limit = f", at most {max_jobs} at once" if max_jobs else ""
        self.name = f"this host (local jobs in {self.root}{limit})"
        self.start_grace = start_grace
        #: Jobs running at once, at most (further ones wait, PENDING); None: no bound.
        self.max_jobs = max_jobs
        #: How a job's runner is started (its folder follows).
        self.runner_command = [sys.executable, "-m", "zocalo.wrapper.backends.local_job"]
        try:
            (self.root / BY_COMMENT).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise BackendError(
                f"cannot create the local job folder {self.root}: {error.strerror}"
            ) from None
        #: Runners this process started: polled so that none stays a zombie.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _folder(self, job_id: int) -> Path:
        return self.root / str(job_id)

    def job_ids(self) -> list[int]:
        """Every job whose folder is here (a scan: for tools and the demo, not lookups)."""
        return sorted(int(entry.name) for entry in self.root.iterdir() if entry.name.isdigit())

    def _new_folder(self) -> tuple[int, Path]:
        """A new job's folder, its id one above the last given (committed before use)."""
        descriptor = os.open(self.root / LAST_ID_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "r+") as counter:
            fcntl.flock(counter, fcntl.LOCK_EX)  # released as it closes
            text = counter.read().strip()
            # Folders from before the counter existed: once, the highest of them.
            job_id = (int(text) if text.isdigit() else max(self.job_ids(), default=0)) + 1
            while True:
                folder = self._folder(job_id)
                try:
                    folder.mkdir(mode=0o700)
                except FileExistsError:
                    job_id += 1
                    continue
                break
            counter.seek(0)
            counter.truncate()
            counter.write(str(job_id))
            counter.flush()
            os.fsync(counter.fileno())
        return job_id, folder

    def submit(self, request: JobRequest) -> int:
        try:
            Path(request.working_directory).mkdir(parents=True, exist_ok=True)
            job_id, folder = self._new_folder()
        except OSError as error:
            raise _start_error(error) from None
        try:
            script = folder / SCRIPT_FILE
            descriptor = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(descriptor, "w") as stream:
                stream.write(request.script)
            write_atomically(
                folder / JOB_FILE, {**_job_description(request), "max_jobs": self.max_jobs}
            )
            if request.comment is not None:
                write_atomically(self._comment_file(request.comment), {"job_id": job_id})
            with open(folder / "runner.log", "wb") as log:
                runner = subprocess.Popen(
                    [*self.runner_command, str(folder)],
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,  # outlives the service; its own signals
                )
        except OSError as error:
            self._remove(job_id, request.comment)  # no runner: nothing of it runs
            raise _start_error(error) from None
        self._children[job_id] = runner
        return job_id

    def _comment_file(self, comment: str) -> Path:
        return self.root / BY_COMMENT / comment_key(comment)

    def _remove(self, job_id: int, comment: str | None) -> None:
        if comment is not None:
            entry = self._comment_file(comment)
            if _pid(read_json(entry), "job_id") == job_id:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

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
            if time.time() - float(job.get("submitted_at", 0)) < self.start_grace:
                return JobState(job_id, "PENDING")
            # Given up: from now on a runner that starts late finds the job taken.
            create_once(folder / RUNNER_FILE, {"lost": time.time()})
            runner = read_json(folder / RUNNER_FILE)
        if runner_alive(runner):
            running = (folder / SCRIPT_PID_FILE).exists()
            return JobState(job_id, "RUNNING" if running else "PENDING")
        end = read_json(folder / END_FILE)  # (it may have ended since the first look)
        if end is not None:
            return _ended(job_id, end)
        if runner is not None:  # an end is reported: nothing of the job may run on
            stop_leftover_script(folder, runner)
        return self._conclude(job_id, runner)

    def _conclude(self, job_id: int, runner: Mapping[str, Any] | None) -> JobState:
        """The end of a job whose runner is gone (or never came), written down as its end."""
        folder = self._folder(job_id)
        if (folder / CANCEL_FILE).exists():
            end: dict[str, Any] = {"state": "CANCELLED", "reason": "cancelled"}
        elif runner is not None and "lost" in runner:
            end = {"state": "NODE_FAIL", "reason": "the job's runner did not start"}
        else:
            end = {"state": "NODE_FAIL", "reason": "the job's runner ended without a word"}
        end["ended_at"] = time.time()
        with contextlib.suppress(OSError):  # (read again next time otherwise)
            write_atomically(folder / END_FILE, end)
        return _ended(job_id, end)

    def cancel(self, job_id: int) -> None:
        folder = self._folder(job_id)
        if read_json(folder / JOB_FILE) is None or (folder / END_FILE).exists():
            return
        try:
            (folder / CANCEL_FILE).touch(mode=0o600)
        except OSError as error:
            raise BackendError(f"cannot cancel local job {job_id}: {error.strerror}") from None
        runner = read_json(folder / RUNNER_FILE)
        if runner is None or "lost" in runner:
            return  # the runner reads the mark before it starts the script
        if runner_alive(runner):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(runner["pid"]), signal.SIGTERM)  # it stops the script's group
            return
        stop_leftover_script(folder, runner)  # no runner to do it

    def runner_running(self, job_id: int) -> bool:
        """Whether the job's runner process still runs (it ends just after the job's end)."""
        return runner_alive(read_json(self._folder(job_id) / RUNNER_FILE))

    def find(self, comment: str) -> int | None:
        job_id = _pid(read_json(self._comment_file(comment)), "job_id")
        if job_id is None:
            return None
        job = read_json(self._folder(job_id) / JOB_FILE)
        return job_id if job is not None and job.get("comment") == comment else None

    def forget(self, job_id: int, comment: str | None) -> bool:
        """Remove an ended job's folder (see the module docstring); whether it did."""
        folder = self._folder(job_id)
        job = read_json(folder / JOB_FILE)
        if job is None or job.get("comment") != comment or not (folder / END_FILE).exists():
            return False
        self._remove(job_id, comment)
        return True


def _start_error(error: OSError) -> BackendError:
    """What a failure to start a job means: try later (it passes), or do not retry."""
    text = f"cannot start a local job: {error.strerror or error}"
    if error.errno in TRANSIENT_ERRORS:
        return BackendUnreachable(text)
    return JobRefused(text)


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
