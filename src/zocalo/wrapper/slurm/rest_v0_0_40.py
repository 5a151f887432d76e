"""Slurm REST API v0.0.40 (Slurm 23.11), also serving v0.0.41 to v0.0.44 (up to 25.05).

The fields a submission and a job state use are spelled alike from v0.0.40 to
v0.0.44 (checked against the OpenAPI models python-zocalo generated for v0.0.40
and v0.0.44, and cryoem-services' submissions to v0.0.40-v0.0.44); what changed
from v0.0.38: ``environment`` is a list of ``NAME=value``, ``nodes`` a string,
``memory_per_node`` and ``time_limit`` are ``{"set", "number"}`` structs, GPUs
are ``tres_per_job: "gres/gpu:N"``; a job's ``job_state`` is a list (base state
first, then flags) and ``exit_code`` a struct (``return_code``, ``signal``). The
submission answer has ``job_id`` at the top (and, in v0.0.40, in ``result``).

Not run against a real slurmrestd of these versions (this machine's Slurm 22.05
serves v0.0.38 only): tested on the JSON shapes of those models.
"""

from __future__ import annotations

from typing import Any

from zocalo.wrapper.backends.base import JobRequest, JobState
from zocalo.wrapper.slurm.rest_v0_0_38 import RestV0038

#: The API versions this module speaks.
VERSIONS = ("v0.0.40", "v0.0.41", "v0.0.42", "v0.0.43", "v0.0.44")


def _number(value: int) -> dict[str, Any]:
    return {"set": True, "infinite": False, "number": value}


def _unwrap(value: Any) -> int | None:
    """A plain number, or the ``number`` of a set ``{"set", "number"}`` struct."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and value.get("set", True) and isinstance(value.get("number"), int):
        return int(value["number"])
    return None


def job_description(request: JobRequest) -> dict[str, Any]:
    """``request`` in the ``job`` spelling of v0.0.40 to v0.0.44 (unset fields left out)."""
    job: dict[str, Any] = {
        "name": request.name,
        "current_working_directory": request.working_directory,
        "standard_output": request.standard_output,
        "standard_error": request.standard_error,
        "environment": [f"{key}={value}" for key, value in request.environment.items()],
    }
    optional = {
        "cpus_per_task": request.cpus_per_task,
        "tasks": request.tasks,
        "nodes": str(request.nodes) if request.nodes else None,
        "memory_per_node": _number(request.memory_per_node) if request.memory_per_node else None,
        "time_limit": _number(request.time_limit) if request.time_limit else None,
        "partition": request.partition,
        "prefer": request.prefer,
        "tres_per_job": f"gres/gpu:{request.gpus}" if request.gpus else None,
        "comment": request.comment,
    }
    job.update({key: value for key, value in optional.items() if value not in (None, "")})
    return job


def job_state(job: dict[str, Any]) -> JobState:
    """One entry of a ``jobs`` answer."""
    states = job.get("job_state") or ["UNKNOWN"]
    state = states[0] if isinstance(states, list) else states
    status = job.get("exit_code")
    exit_code = signal = None
    if isinstance(status, dict):
        exit_code = _unwrap(status.get("return_code"))
        signal_info = status.get("signal")
        if isinstance(signal_info, dict):
            signal = _unwrap(signal_info.get("id"))
    elif isinstance(status, int):
        exit_code = status
    return JobState(
        job_id=int(job["job_id"]),
        state=str(state),
        exit_code=exit_code,
        signal=signal or None,
        reason=job.get("state_reason"),
    )


class RestV0040(RestV0038):
    """Jobs through slurmrestd's ``openapi/slurmctld`` plugin, API v0.0.40 to v0.0.44."""

    def __init__(self, client: Any, version: str = "v0.0.40") -> None:
        if version not in VERSIONS:
            raise ValueError(f"{version!r} is not one of {', '.join(VERSIONS)}")
        self.version = version
        super().__init__(client)

    def submission(self, request: JobRequest) -> dict[str, Any]:
        return {"script": request.script, "job": job_description(request)}

    @staticmethod
    def submitted_job_id(answer: dict[str, Any]) -> int | None:
        job_id = answer.get("job_id")
        if not isinstance(job_id, int):
            result = answer.get("result")
            job_id = result.get("job_id") if isinstance(result, dict) else None
        return int(job_id) if isinstance(job_id, int) else None

    @staticmethod
    def job_state(job: dict[str, Any]) -> JobState:
        return job_state(job)
