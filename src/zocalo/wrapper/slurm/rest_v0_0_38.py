"""Slurm REST API v0.0.38 (Slurm 21.08 and 22.05): tested against a real slurmrestd.

Its spellings: ``environment`` is an object, ``nodes`` a ``[min, max]`` list,
``memory_per_node`` (MB) and ``time_limit`` (minutes) plain integers, GPUs as
``gres: "gpu:N"``; a job's ``job_state`` is a string and ``exit_code`` the wait status (exit
code in the high byte, signal in the low one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from zocalo.wrapper.backends.base import JobBackend, JobRefused, JobRequest, JobState
from zocalo.wrapper.slurm.rest import (
    RestClient,
    describe_errors,
    errors_of,
    raise_for,
    unknown_job,
)

VERSION = "v0.0.38"

log = logging.getLogger("zocalo.wrapper.slurm")


def job_properties(request: JobRequest) -> dict[str, Any]:
    """``request`` in v0.0.38's ``job`` spelling (unset fields left out)."""
    job: dict[str, Any] = {
        "name": request.name,
        "current_working_directory": request.working_directory,
        "standard_output": request.standard_output,
        "standard_error": request.standard_error,
        "environment": dict(request.environment),
    }
    optional = {
        "cpus_per_task": request.cpus_per_task,
        "tasks": request.tasks,
        "nodes": [request.nodes, request.nodes] if request.nodes else None,
        "memory_per_node": request.memory_per_node,
        "time_limit": request.time_limit,
        "partition": request.partition,
        "prefer": request.prefer,
        # Per node, but jobs here ask for one node; 22.05 misreads "gpus" (a job that
        # can never run, or no answer at all).
        "gres": f"gpu:{request.gpus}" if request.gpus else None,
        "comment": request.comment,
    }
    job.update({key: value for key, value in optional.items() if value not in (None, "")})
    return job


def job_state(job: dict[str, Any]) -> JobState:
    """One entry of a ``jobs`` answer."""
    status = job.get("exit_code")
    exit_code = signal = None
    if isinstance(status, int):
        exit_code, signal = (status >> 8) & 0xFF, status & 0x7F
    return JobState(
        job_id=int(job["job_id"]),
        state=str(job.get("job_state") or "UNKNOWN"),
        exit_code=exit_code,
        signal=signal or None,
        reason=job.get("state_reason"),
    )


class RestV0038(JobBackend):
    """Jobs through slurmrestd's ``openapi/v0.0.38`` plugin."""

    version = VERSION

    def __init__(self, client: RestClient) -> None:
        self.client = client
        self.name = f"slurmrestd {client.url} (REST {self.version})"

    def _call(self, method: str, endpoint: str, body: Any = None) -> dict[str, Any]:
        status, answer = self.client.request(method, f"slurm/{self.version}/{endpoint}", body)
        raise_for(status, answer, f"{self.name}: {method} {endpoint}")
        return answer

    def submit(self, request: JobRequest) -> int:
        status, answer = self.client.request(
            "POST", f"slurm/{self.version}/job/submit", self.submission(request)
        )
        job_id = self.submitted_job_id(answer)
        if job_id is not None:
            # An answer may carry both a job and errors ("Requested partition configuration
            # not available now"): the job exists, and waits in the queue for its chance.
            if errors := errors_of(answer):
                log.warning(
                    "%s: job %d submitted, with: %s", self.name, job_id, describe_errors(errors)
                )
            return job_id
        raise_for(status, answer, f"{self.name}: POST job/submit")
        raise JobRefused(f"{self.name} gave no job id: {describe_errors(errors_of(answer))}")

    def submission(self, request: JobRequest) -> dict[str, Any]:
        return {"script": request.script, "job": job_properties(request)}

    @staticmethod
    def submitted_job_id(answer: dict[str, Any]) -> int | None:
        job_id = answer.get("job_id")
        return int(job_id) if isinstance(job_id, int) else None

    def states(self, job_ids: Iterable[int]) -> dict[int, JobState | None]:
        wanted = list(dict.fromkeys(job_ids))
        if len(wanted) == 1:
            return {wanted[0]: self._one(wanted[0])}
        known = {state.job_id: state for state in self._all()}
        return {job_id: known.get(job_id) for job_id in wanted}

    def _one(self, job_id: int) -> JobState | None:
        status, answer = self.client.request("GET", f"slurm/{self.version}/job/{job_id}")
        if unknown_job(answer):
            return None
        raise_for(status, answer, f"{self.name}: GET job/{job_id}")
        jobs = [job for job in answer.get("jobs") or [] if job.get("job_id") == job_id]
        return self.job_state(jobs[0]) if jobs else None

    def _all(self) -> list[JobState]:
        answer = self._call("GET", "jobs")
        return [self.job_state(job) for job in answer.get("jobs") or []]

    @staticmethod
    def job_state(job: dict[str, Any]) -> JobState:
        return job_state(job)

    def cancel(self, job_id: int) -> None:
        status, answer = self.client.request("DELETE", f"slurm/{self.version}/job/{job_id}")
        if unknown_job(answer):
            return
        raise_for(status, answer, f"{self.name}: DELETE job/{job_id}", ended_is_fine=True)

    def find(self, comment: str) -> int | None:
        answer = self._call("GET", "jobs")
        for job in answer.get("jobs") or []:
            if job.get("comment") == comment:
                return int(job["job_id"])
        return None
