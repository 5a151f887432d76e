"""What every way of running a long job offers: submit a job, read its state, cancel it.

The implementations: Slurm (:mod:`zocalo.wrapper.slurm`: one module per REST API
version, and the command-line tools) and this host (:mod:`.local`, for sites and
demos without a cluster); :func:`zocalo.services.cluster_backend.backend_for_site` picks one
from the site configuration. They take and give the neutral :class:`JobRequest`
and :class:`JobState` defined here, in Slurm's terms (states, exit codes), which
the local backend speaks too.

Errors say what the caller should do: :class:`BackendUnreachable` (try again
later: nothing was decided) or :class:`JobRefused` (the backend said no: trying
again will not help).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from zocalo.errors import ZocaloError

#: States after which a job will not run again (``squeue``/REST spellings).
ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)


class BackendError(ZocaloError):
    """Running a job through a backend failed."""


class BackendUnreachable(BackendError):
    """The backend did not answer (down, restarting, network): nothing was done; try later."""


class JobRefused(BackendError):
    """The backend refused the request (bad partition, too many resources...): do not retry."""


@dataclass(frozen=True)
class JobRequest:
    """One batch job, in Slurm's terms but no API version's spelling."""

    script: str
    name: str
    working_directory: str
    standard_output: str
    standard_error: str
    #: The job's whole environment (Slurm adds its own ``SLURM_*`` variables).
    environment: Mapping[str, str] = field(default_factory=dict)
    cpus_per_task: int | None = None
    tasks: int | None = None
    nodes: int | None = None
    #: Megabytes per node.
    memory_per_node: int | None = None
    #: Minutes.
    time_limit: int | None = None
    partition: str | None = None
    prefer: str | None = None
    gpus: int | None = None
    #: Free text kept with the job: we put a tag there to find the job again.
    comment: str | None = None


@dataclass(frozen=True)
class JobState:
    """What the backend says of a job: its state (``RUNNING``, ``COMPLETED``...), exit code, why."""

    job_id: int
    state: str
    exit_code: int | None = None
    #: Signal that ended the batch script, if one did.
    signal: int | None = None
    reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED" and not self.exit_code

    def describe(self) -> str:
        parts = [f"job {self.job_id} {self.state}"]
        if self.exit_code:
            parts.append(f"exit code {self.exit_code}")
        if self.signal:
            parts.append(f"signal {self.signal}")
        if self.reason and self.reason != "None":
            parts.append(f"reason {self.reason}")
        return ", ".join(parts)


class JobBackend(ABC):
    """Submits, watches and cancels jobs (on one Slurm cluster, or this host)."""

    #: How the backend names itself in log lines (``REST v0.0.38``, ``sbatch``).
    name: str = ""
    #: What its jobs are called in what the recipe is told (``Slurm job 12``).
    kind: str = "Slurm"
    #: :class:`JobRequest` fields it accepts but does not enforce (said once at start).
    ignored_fields: tuple[str, ...] = ()

    @abstractmethod
    def submit(self, request: JobRequest) -> int:
        """Submit ``request``; its job id."""

    @abstractmethod
    def states(self, job_ids: Iterable[int]) -> dict[int, JobState | None]:
        """The state of each job; None for a job the backend does not know (any more)."""

    def state(self, job_id: int) -> JobState | None:
        return self.states([job_id])[job_id]

    @abstractmethod
    def cancel(self, job_id: int) -> None:
        """Cancel the job (a job that has ended already is no error)."""

    @abstractmethod
    def find(self, comment: str) -> int | None:
        """The job whose comment is ``comment``, if the backend still knows one."""

    def forget(self, job_id: int, comment: str | None) -> bool:
        """Drop what the backend keeps of an ended job whose end the caller has recorded
        durably (only if its comment is ``comment``); whether it did. Slurm forgets by
        itself (``MinJobAge``): nothing to do there."""
        return False
