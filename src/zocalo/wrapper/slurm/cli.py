"""Slurm through its command-line tools (``sbatch``, ``scontrol``, ``squeue``, ``scancel``),
for sites without slurmrestd: the service runs on a submit host, as its own user.

A job that ``scontrol`` no longer shows (ended more than ``MinJobAge`` ago, 300 s by
default, and no accounting database) is looked up in the job completion log
(``sacct -c``, where ``JobCompType=jobcomp/filetxt`` keeps one): its end is then
still known. Without such a log it is unknown (None: "disappeared"). The log is
keyed by job id alone: after a controller's clean start (ids counted afresh) an
old entry could answer for a new job; the latest entry of an id is the one read.

The job's environment is exactly the request's (as over REST): ``sbatch`` runs
with that environment and ``--export=ALL``, plus ``SLURM_CONF`` when the service
has one. A tool that cannot reach the controller, or takes longer than
:data:`COMMAND_TIMEOUT`, is :class:`SlurmUnreachable`; any other complaint
from ``sbatch`` is :class:`JobRefused`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from zocalo.wrapper.backends.base import (
    BackendError,
    JobBackend,
    JobRefused,
    JobRequest,
    JobState,
)
from zocalo.wrapper.slurm.errors import SlurmError, SlurmUnreachable

#: Seconds one command may take.
COMMAND_TIMEOUT = 60.0
#: What the tools print when the controller does not answer.
_UNREACHABLE = re.compile(
    r"unable to contact slurm controller|connect failure|socket timed out|"
    r"connection refused|zero bytes were transmitted|communication connection failure",
    re.IGNORECASE,
)
_INVALID_JOB = re.compile(r"invalid job id", re.IGNORECASE)
#: Variables of the service's own environment that the tools themselves need.
_TOOL_VARIABLES = ("SLURM_CONF",)


def sbatch_options(request: JobRequest) -> list[str]:
    """``request`` as ``sbatch`` options."""
    options = [
        "--parsable",
        "--export=ALL",
        f"--job-name={request.name}",
        f"--chdir={request.working_directory}",
        f"--output={request.standard_output}",
        f"--error={request.standard_error}",
    ]
    optional = {
        "--cpus-per-task": request.cpus_per_task,
        "--ntasks": request.tasks,
        "--nodes": request.nodes,
        "--mem": request.memory_per_node,
        "--time": request.time_limit,
        "--partition": request.partition,
        "--prefer": request.prefer,
        "--gpus": request.gpus,
        "--comment": request.comment,
    }
    options += [f"{flag}={value}" for flag, value in optional.items() if value not in (None, "")]
    return options


def _exit_and_signal(text: str) -> tuple[int | None, int | None]:
    """Slurm's ``ExitCode`` field, ``code:signal``."""
    exit_code, _, signal = text.partition(":")
    return (
        int(exit_code) if exit_code.isdigit() else None,
        int(signal) if signal.isdigit() and int(signal) else None,
    )


def parse_completions(text: str) -> dict[int, JobState]:
    """``sacct -c --parsable2 --format=JobID,State,ExitCode`` lines: each job's latest."""
    states = {}
    for line in text.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, exit_field = rest.partition("|")
        if not job_id.isdigit() or not state:
            continue
        exit_code, signal = _exit_and_signal(exit_field)
        states[int(job_id)] = JobState(
            job_id=int(job_id),
            state=state.split()[0],  # "CANCELLED by 0"
            exit_code=exit_code,
            signal=signal,
            reason="from the job completion log",
        )
    return states


def parse_show_job(text: str) -> list[JobState]:
    """``scontrol show job --oneliner`` output: one job per line of ``Key=Value`` words."""
    states = []
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in re.findall(r"(\w+=\S*)", line) if "=" in word)
        if "JobId" not in fields or "JobState" not in fields:
            continue
        exit_code, signal = _exit_and_signal(fields.get("ExitCode", ""))
        states.append(
            JobState(
                job_id=int(fields["JobId"]),
                state=fields["JobState"],
                exit_code=exit_code,
                signal=signal,
                reason=fields.get("Reason"),
            )
        )
    return states


class CommandLineBackend(JobBackend):
    """Jobs through ``sbatch`` and friends on this host."""

    def __init__(self, bin_directory: str | None = None) -> None:
        self.bin_directory = bin_directory
        self.name = "Slurm command-line tools (sbatch)"

    def _tool(self, name: str) -> str:
        found = shutil.which(name, path=self.bin_directory)
        if found is None:
            where = self.bin_directory or "PATH"
            raise SlurmError(f"{name} not found in {where}: is Slurm's client installed?")
        return found

    def _run(
        self,
        tool: str,
        arguments: Sequence[str],
        *,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        command = [self._tool(tool), *arguments]
        try:
            return subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise SlurmUnreachable(f"{tool} took more than {COMMAND_TIMEOUT:g} s") from None
        except OSError as error:
            raise SlurmError(f"cannot run {tool}: {error.strerror or error}") from None

    @staticmethod
    def _complaint(tool: str, done: subprocess.CompletedProcess[str]) -> str:
        text = (done.stderr or done.stdout).strip().replace("\n", "; ")
        return f"{tool} failed (exit status {done.returncode}): {text or 'no message'}"

    def _unreachable_or(self, tool: str, done: subprocess.CompletedProcess[str]) -> BackendError:
        complaint = self._complaint(tool, done)
        if _UNREACHABLE.search(done.stderr or ""):
            return SlurmUnreachable(complaint)
        return JobRefused(complaint)

    def submit(self, request: JobRequest) -> int:
        environment = {key: os.environ[key] for key in _TOOL_VARIABLES if key in os.environ}
        environment.update(request.environment)
        done = self._run("sbatch", sbatch_options(request), stdin=request.script, env=environment)
        if done.returncode != 0:
            raise self._unreachable_or("sbatch", done)
        first = done.stdout.strip().split(";")[0]
        if not first.isdigit():
            raise JobRefused(f"sbatch gave no job id: {done.stdout.strip()!r}")
        return int(first)

    def states(self, job_ids: Iterable[int]) -> dict[int, JobState | None]:
        wanted = list(dict.fromkeys(job_ids))
        if len(wanted) == 1:
            done = self._run("scontrol", ["show", "job", "--oneliner", str(wanted[0])])
            if done.returncode != 0 and _INVALID_JOB.search(done.stderr):
                return {wanted[0]: self.completed(wanted).get(wanted[0])}
        else:
            done = self._run("scontrol", ["show", "job", "--oneliner"])
        if done.returncode != 0:
            raise SlurmUnreachable(self._complaint("scontrol", done))
        known = {state.job_id: state for state in parse_show_job(done.stdout)}
        forgotten = [job_id for job_id in wanted if job_id not in known]
        if forgotten:
            known.update(self.completed(forgotten))
        return {job_id: known.get(job_id) for job_id in wanted}

    def completed(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        """How the jobs ended, as the job completion log (``sacct -c``) has it; those it
        does not hold (or no log at all) are left out."""
        wanted = ",".join(str(job_id) for job_id in job_ids)
        fields = ["-c", "--noheader", "--parsable2", "--format=JobID,State,ExitCode"]
        try:
            done = self._run("sacct", [*fields, "-j", wanted])
        except SlurmError:  # no sacct here, or it hangs: as unknown as before
            return {}
        return parse_completions(done.stdout) if done.returncode == 0 else {}

    def cancel(self, job_id: int) -> None:
        done = self._run("scancel", [str(job_id)])
        if done.returncode != 0 and not _INVALID_JOB.search(done.stderr):
            raise self._unreachable_or("scancel", done)

    def find(self, comment: str) -> int | None:
        done = self._run("squeue", ["--noheader", "--states=all", "--format=%i|%k"])
        if done.returncode != 0:
            raise SlurmUnreachable(self._complaint("squeue", done))
        for line in done.stdout.splitlines():
            job_id, _, job_comment = line.strip().partition("|")
            if job_comment == comment and job_id.isdigit():
                return int(job_id)
        return None
