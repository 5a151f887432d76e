"""The runner of one local job: ``python -m zocalo.wrapper.backends.local_job FOLDER``.

Started by :class:`~zocalo.wrapper.backends.local.LocalBackend` in a session of
its own, it claims the job (``runner.json``, created once: a backend that gave the
job up as lost claimed it first, and then nothing runs), and runs the folder's
script in a process group of the script's own, with the job's directory,
environment and output files (the script's process writes its pid to
``script.json`` before it executes the script, so a runner killed at any moment
leaves a script that can be found and stopped); stops that group at
the time limit (TIMEOUT) or on SIGTERM (a cancellation: CANCELLED), SIGKILL
after :data:`KILL_GRACE` seconds; and writes how the job ended to ``end.json``,
which is what every later look at the job reads. With ``max_jobs`` (the ``cluster``
section's), a runner first waits, its job PENDING, for one of that many slots
(``<root>/slots/<n>``, each held with a lock while its job runs). Few imports: it starts fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from zocalo.wrapper.backends.local import (
    CANCEL_FILE,
    END_FILE,
    JOB_FILE,
    RUNNER_FILE,
    SCRIPT_FILE,
    SCRIPT_PID_FILE,
    create_once,
    process_start,
    read_json,
    write_atomically,
)

#: Seconds between SIGTERM and SIGKILL of a script that must stop.
KILL_GRACE = 5.0
#: Seconds between two looks for a free slot (``max_jobs``).
SLOT_POLL = 0.2


class _Stop:
    """Why the script must stop (SIGTERM heard, time limit), and since when."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.since = 0.0

    def request(self, state: str) -> None:
        if self.state is None:
            self.state, self.since = state, time.monotonic()


def _open_output(path: str) -> Any:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return open(target, "wb")


def _take_slot(folder: Path, max_jobs: int, stop: _Stop) -> IO[bytes] | None:
    """Wait for one of ``max_jobs`` slots of the backend's folder; the slot (held until
    this runner closes it or ends), or None if the job was cancelled meanwhile."""
    slots = folder.parent / "slots"
    slots.mkdir(mode=0o700, exist_ok=True)
    said = False
    while stop.state is None:
        for number in range(max_jobs):
            slot = open(slots / str(number), "ab")  # noqa: SIM115 (held past this function)
            try:
                fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                slot.close()
                continue
            return slot
        if not said:
            print(f"{folder}: waiting for one of {max_jobs} job slots", file=sys.stderr, flush=True)
            said = True
        time.sleep(SLOT_POLL)
    return None


def _record_script(folder: Path, runner: int) -> Callable[[], None]:
    """What the script's process does before it executes the script: write its pid (its
    process group's id), then go on only while its runner lives (a runner gone by then
    may have been found dead with no script to stop: the job is over)."""

    def record() -> None:
        write_atomically(folder / SCRIPT_PID_FILE, {"pid": os.getpid(), "runner": runner})
        if os.getppid() != runner:
            os._exit(127)

    return record


def run(folder: Path) -> dict[str, Any] | None:
    """Run the job in ``folder`` to its end; how it ended (also written to ``end.json``),
    or None if the job was no longer this runner's to run."""
    job = read_json(folder / JOB_FILE)
    if job is None:
        raise SystemExit(f"{folder}: no {JOB_FILE}")
    stop = _Stop()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.request("CANCELLED"))
    me = {"pid": os.getpid(), "start": process_start(os.getpid())}
    if not create_once(folder / RUNNER_FILE, me):
        print(f"{folder}: the job was given up before this runner started", file=sys.stderr)
        return None
    max_jobs = job.get("max_jobs")
    slot = _take_slot(folder, max_jobs, stop) if isinstance(max_jobs, int) else None
    if (folder / CANCEL_FILE).exists() or (max_jobs and slot is None):
        return _end(folder, {"state": "CANCELLED", "reason": "cancelled before it started"})
    with slot or contextlib.nullcontext():
        return _run_script(folder, job, stop)


def _run_script(folder: Path, job: dict[str, Any], stop: _Stop) -> dict[str, Any]:
    try:
        stdout = _open_output(job["standard_output"])
        stderr = (
            stdout
            if job["standard_error"] == job["standard_output"]
            else _open_output(job["standard_error"])
        )
        with stdout, stderr:
            script = subprocess.Popen(
                [str(folder / SCRIPT_FILE)],
                cwd=job["working_directory"],
                env=job["environment"],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                process_group=0,  # its own group: stopped as a whole
                preexec_fn=_record_script(folder, os.getpid()),
            )
    except (OSError, subprocess.SubprocessError) as error:
        return _end(folder, {"state": "FAILED", "exit_code": 127, "reason": str(error)})
    limit = job.get("time_limit")
    deadline = time.monotonic() + limit * 60 if isinstance(limit, int | float) else None
    signalled: set[int] = set()
    while True:
        try:
            script.wait(0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        if deadline is not None and time.monotonic() > deadline:
            stop.request("TIMEOUT")
        if stop.state is not None:
            late = time.monotonic() - stop.since > KILL_GRACE
            signum = signal.SIGKILL if late else signal.SIGTERM
            if signum not in signalled:
                signalled.add(signum)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(script.pid, signum)
    code = script.returncode
    with contextlib.suppress(ProcessLookupError):  # what it left behind
        os.killpg(script.pid, signal.SIGKILL)
    end: dict[str, Any] = {"exit_code": code if code >= 0 else 0}
    if code < 0:
        end["signal"] = -code
    if stop.state is not None:
        end.update(state=stop.state, reason=stop.state.lower())
    elif code == 0:
        end["state"] = "COMPLETED"
    else:
        end.update(state="FAILED", reason="NonZeroExitCode" if code > 0 else "signal")
    return _end(folder, end)


def _end(folder: Path, end: dict[str, Any]) -> dict[str, Any]:
    end["ended_at"] = time.time()
    write_atomically(folder / END_FILE, end)
    return end


def main(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print("usage: python -m zocalo.wrapper.backends.local_job FOLDER", file=sys.stderr)
        return 2
    run(Path(arguments[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
