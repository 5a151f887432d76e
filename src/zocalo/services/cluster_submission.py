"""ClusterSubmission: runs a recipe step as a Slurm (or local) job and follows it to its end.

``zocalo.service -s ClusterSubmission`` consumes queue ``cluster.submission``,
whose steps are written as Diamond's recipes write them (see
:mod:`zocalo.services.cluster_parameters`; DiamondLightSource/cryoem-services'
recipes run unchanged). For each step:

1. the recipe-wrapper file is written where ``wrapper`` says (``zocalo.wrap
   --recipewrapper $RECIPEWRAP`` in the job reads it and reports down the recipe);
2. the job is written down in the job record (:mod:`~zocalo.services.cluster_jobs`),
   submitted, and its id recorded, each committed to disk;
3. the message is acknowledged together with ``{"jobid": N}`` on the step's
   ``job_submitted`` output and a *poll*: the same message, marked with the
   header ``zocalo-cluster-job``, sent back to this queue after a delay. A job
   may run for hours, and no delivery is held meanwhile.

Each poll reads the job's state; while it runs, the poll goes round again,
less often as the job gets older (1 s, 2 s, 4 s... up to ``ZOCALO_CLUSTER_POLL``
seconds, 30 by default). When the job has ended:

* COMPLETED with exit code 0: ``job_completed`` gets ``{"jobid", "state", "exit_code"}``;
* anything else (FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY...) or a job
  Slurm no longer knows: the failure branch gets the same with a ``message``: the
  step's ``failure`` output, else its ``error`` output. (A job Slurm forgot, ended
  ``MinJobAge`` ago while the service was away, is "disappeared" unless the backend
  still learns its end: the ``sbatch`` backend reads the job completion log.)

Polls are messages, so tracking survives a restart of the service (or its
machine) as any message does, and the record says what was already decided.

Slurm unreachable: a submission goes back to the queue with a delay that
doubles up to ``ZOCALO_CLUSTER_WAIT`` seconds (300 by default), as often as it
takes, with a warning each time; a poll just polls later. Nothing is lost or
submitted twice. Parameters that describe no job (a relative ``workingdir``...)
go to ``dlq.cluster.submission`` at once with the reason; a job Slurm refuses is
tried again by the runner (a user's job limit passes), then goes there too.

``zocalo cancel RECIPE_ID`` (a broadcast on ``zocalo.cancel``): the recipe's jobs
are cancelled (again at each poll, until Slurm takes it), their ends are not
reported, and the recipe's later ``cluster.submission`` steps are dropped (one log
line each) for a week (``CANCEL_WINDOW``). The queue's handler sees the messages of
cancelled recipes (``sees_cancelled``), which every other handler is spared
(:mod:`zocalo.service.middleware.cancellation`): a poll of a cancelled recipe's job
must still cancel the job and record its end. A cancellation made while the
service was down reaches it through ``step.cancelled`` (the runner's replay of
the kept cancellations), at the next poll of each job.

Where jobs run (:func:`zocalo.services.cluster_backend.backend_for_site`): on Slurm as
the site configuration's ``slurm`` section says (``url``, ``api_version``, ``user``,
``user_token``: :func:`zocalo.wrapper.slurm.backend_for`); on the service's own host
(:mod:`zocalo.wrapper.backends.local`, the same states, tracking, cancellation and
restarts) when there is no ``slurm`` section, or a ``cluster`` section says
``backend: local``. ``ZOCALO_CLUSTER_JOBS`` names the job record (default:
``cluster-jobs.db`` in the data directory); local jobs' folders go beside it
(``cluster-jobs.local/``) unless the ``cluster`` section's ``jobs`` says where. Once a
job's end is committed to the record, the backend may forget the job
(:meth:`~zocalo.wrapper.backends.base.JobBackend.forget`: a local job's folder goes);
each start forgets those a stop left in between.

Note that python-zocalo's ClusterSubmission must not share the
queue while this one has jobs in flight: it would take a poll for a new job.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from zocalo.errors import ZocaloError
from zocalo.private_files import replace_private
from zocalo.recipe.cancel import CANCEL_TOPIC, REPLAYED_KEY
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import RECIPE_HEADER
from zocalo.service import Service, handler
from zocalo.service.middleware.base import ATTEMPT_HEADER
from zocalo.service.middleware.retries import RETRY_REASON_HEADER
from zocalo.services.cluster_backend import backend_for_site
from zocalo.services.cluster_jobs import JobBook, JobRecord
from zocalo.services.cluster_parameters import BadSubmission, read_submission
from zocalo.transport.base import without_broker_headers
from zocalo.wrapper.backends.base import BackendError, BackendUnreachable, JobBackend, JobState

QUEUE = "cluster.submission"
#: Marks a poll: the job record's key of the job it follows.
JOB_HEADER = "zocalo-cluster-job"
#: Each poll message's own id (the one that reports an end is recorded).
POLL_HEADER = "zocalo-cluster-poll"
#: How many polls came before this one (the delay grows with it).
POLLS_HEADER = "zocalo-cluster-polls"
#: How many times a submission found Slurm unreachable.
WAITS_HEADER = "zocalo-cluster-waits"
_OWN_HEADERS = (JOB_HEADER, POLL_HEADER, POLLS_HEADER, WAITS_HEADER)
JOBS_VARIABLE = "ZOCALO_CLUSTER_JOBS"
#: Seconds between two clear-outs of long-ended jobs from the record.
TIDY_INTERVAL = 3600.0
POLL_VARIABLE = "ZOCALO_CLUSTER_POLL"
WAIT_VARIABLE = "ZOCALO_CLUSTER_WAIT"


class ClusterSetupError(ZocaloError):
    """The service cannot start: no usable ``slurm`` section, or no job record."""


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ClusterSetupError(f"${variable}={text!r}: expected seconds") from None
    if not value > 0:
        raise ClusterSetupError(f"${variable}={text!r}: expected a positive number of seconds")
    return value


@dataclass
class ClusterSettings:
    """Where the job record lives and how often to look (see the module docstring)."""

    jobs: Path = field(
        default_factory=lambda: (
            Path(platformdirs.user_data_dir("zocalo", appauthor=False)) / "cluster-jobs.db"
        )
    )
    #: Longest pause between two polls of a running job.
    max_poll: float = 30.0
    #: Longest pause between two submission attempts while Slurm is unreachable.
    max_wait: float = 300.0
    #: Seconds a state read for one poll serves the others (one request for many jobs).
    state_cache: float = 1.0

    @classmethod
    def from_environment(cls) -> ClusterSettings:
        settings = cls(
            max_poll=_seconds(POLL_VARIABLE, cls.max_poll),
            max_wait=_seconds(WAIT_VARIABLE, cls.max_wait),
        )
        if os.environ.get(JOBS_VARIABLE, "").strip():
            settings.jobs = Path(os.environ[JOBS_VARIABLE]).expanduser()
        return settings

    def delay(self, count: int, longest: float) -> float:
        """1 s, 2 s, 4 s... never more than ``longest``."""
        return min(longest, 2.0 ** min(count, 30))


def local_jobs_folder(record: Path) -> Path:
    """Where local jobs' folders go by default: beside the job record ``record``
    (``cluster-jobs.db`` -> ``cluster-jobs.local/``)."""
    return record.with_name(f"{record.stem}.local")


def message_key(step: RecipeStep) -> str:
    """The identity of the message asking for a job: the same message gives the same key."""
    identity = {
        "recipe": step.recipe_id,
        "step": step.pointer,
        "path": step.path,
        "payload": step.message.payload if step.message else None,
        "parameters": step.parameters,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def outcome_of(job_id: int, state: JobState | None, kind: str = "Slurm") -> dict[str, Any]:
    """What the recipe is told about an ended (or vanished) job of a ``kind`` backend."""
    if state is None:
        return {
            "jobid": job_id,
            "state": "UNKNOWN",
            "exit_code": None,
            "message": f"{kind} job {job_id} disappeared: {kind} no longer knows it",
        }
    outcome: dict[str, Any] = {"jobid": job_id, "state": state.state, "exit_code": state.exit_code}
    if state.signal:
        outcome["signal"] = state.signal
    if not state.succeeded:
        outcome["message"] = f"{kind} {state.describe()}"
    return outcome


class ClusterSubmission(Service):
    """Submits ``cluster.submission`` steps as jobs and reports how they end."""

    name = "ClusterSubmission"

    def __init__(
        self,
        environment: dict[str, Any] | None = None,
        *,
        backend: JobBackend | None = None,
        settings: ClusterSettings | None = None,
    ) -> None:
        super().__init__(environment)
        self.backend = backend
        self.settings = settings
        self.jobs: JobBook | None = None
        self._states: dict[int, tuple[float, JobState | None]] = {}
        self._tidied_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------
    def initializing(self) -> None:
        if self.settings is None:
            self.settings = ClusterSettings.from_environment()
        if self.backend is None:
            self.backend = self._backend_from_site_configuration()
        try:
            self.jobs = JobBook(self.settings.jobs)
        except (OSError, sqlite3.Error) as error:
            raise ClusterSetupError(
                f"cannot open the job record {self.settings.jobs}: {error}"
            ) from None
        active = self.jobs.active()
        self.log.info(
            "submitting to %s; job record %s (%d job(s) running)",
            self.backend.name,
            self.settings.jobs,
            len(active),
        )
        if self.backend.ignored_fields:
            self.log.info(
                "%s jobs run as they come: their %s are accepted and ignored",
                self.backend.kind,
                ", ".join(self.backend.ignored_fields),
            )
        for record in self.jobs.ended_jobs():  # (a stop between recording an end and forgetting)
            self._forget(record)

    def stopping(self) -> None:
        if self.jobs is not None:
            self.jobs.close()

    def _backend_from_site_configuration(self) -> JobBackend:
        assert self.settings is not None
        config = self.site_config
        try:
            return backend_for_site(config.plugins, local_jobs_folder(self.settings.jobs))
        except BackendError as error:
            where = config.path or "no site configuration ($ZOCALO_CONFIG)"
            raise ClusterSetupError(f"{where}: {error}") from None

    # -- messages --------------------------------------------------------------
    @handler(QUEUE, sees_cancelled=True)
    def receive(self, step: RecipeStep, payload: Any) -> None:
        key = step.headers.get(JOB_HEADER)
        if key:
            self.poll(step, str(key))
        else:
            self.submit(step)

    @handler(topic=CANCEL_TOPIC, allow_plain=True)
    def cancel(self, step: RecipeStep, payload: Any) -> None:
        """``zocalo cancel RECIPE_ID``: cancel the recipe's jobs, submit no more for it."""
        assert self.jobs is not None and self.backend is not None
        recipe_id = payload.get("cancel") if isinstance(payload, dict) else None
        if not isinstance(recipe_id, str) or not recipe_id:
            if not (isinstance(payload, dict) and REPLAYED_KEY in payload):  # (a runner's)
                self.log.warning("ignoring a cancellation that names no recipe: %r", payload)
            return
        records = self.jobs.cancel_recipe(recipe_id)
        self.log.info("recipe %s cancelled: cancelling %d job(s)", recipe_id, len(records))
        for record in records:
            if record.job_id is not None:
                self._cancel_job(record.job_id, recipe_id)

    def _cancel_job(self, job_id: int, recipe_id: str) -> None:
        assert self.backend is not None
        try:
            self.backend.cancel(job_id)
            self.log.info("cancelled %s job %d of recipe %s", self.backend.kind, job_id, recipe_id)
        except BackendError as error:  # its next poll tries again
            self.log.warning("could not cancel %s job %d yet: %s", self.backend.kind, job_id, error)

    def submit(self, step: RecipeStep) -> None:
        assert self.jobs is not None and self.backend is not None
        if self._cancelled(step, step.recipe_id):
            self.log.info("recipe %s was cancelled: step %s dropped", step.recipe_id, step.pointer)
            return
        if time.monotonic() - self._tidied_at > TIDY_INTERVAL:
            self._tidied_at = time.monotonic()
            self.jobs.forget_ended()
        key = message_key(step)
        record = self.jobs.get(key)
        if record is not None and record.state != "submitting":
            # This very message came before: its job exists. Announce it again (the
            # first announcement may never have been published) and follow it.
            self.log.info("job %s was submitted for this message before", record.job_id)
            self._announce(step, key, record.job_id)
            return
        tag = f"zocalo-{key}"
        submission = read_submission(step.parameters, comment=tag)
        self.jobs.intend(key, tag, step.recipe_id, step.pointer)
        try:
            job_id = self._find_or_submit(step, submission, record, tag)
        except BackendUnreachable as error:
            self._wait(step, error)
            return
        self.jobs.submitted(key, job_id)
        self.log.info(
            "submitted %s as %s job %d (%s)",
            submission.request.name,
            self.backend.kind,
            job_id,
            submission.working_directory,
        )
        self._announce(step, key, job_id)

    def _find_or_submit(
        self, step: RecipeStep, submission: Any, record: JobRecord | None, tag: str
    ) -> int:
        assert self.backend is not None
        if record is not None:  # a submission was under way when we last stopped
            found = self.backend.find(tag)
            if found is not None:
                self.log.info(
                    "found %s job %d, submitted before a restart", self.backend.kind, found
                )
                return found
        self._write_files(step, submission)
        return self.backend.submit(submission.request)

    def _write_files(self, step: RecipeStep, submission: Any) -> None:
        try:
            submission.working_directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadSubmission(
                f"cannot create workingdir {submission.working_directory}: {error.strerror}"
            ) from None
        if submission.recipe_wrapper is None:
            return
        assert step.message is not None
        body = {
            "recipe": step.message.recipe.to_dict(),
            "recipe-pointer": step.pointer,
            "recipe-path": step.path,
            "environment": step.environment,
            "payload": step.message.payload,
        }
        try:
            # It carries the whole message: private, as every file holding one is.
            replace_private(submission.recipe_wrapper, json.dumps(body, indent=2).encode())
        except OSError as error:
            raise BadSubmission(
                f"cannot write the recipe-wrapper file {submission.recipe_wrapper}: "
                f"{error.strerror}"
            ) from None
        self.log.info("recipe-wrapper file %s written", submission.recipe_wrapper)

    def _announce(self, step: RecipeStep, key: str, job_id: int | None) -> None:
        if job_id is not None and "job_submitted" in _channels(step):
            step.send_to("job_submitted", {"jobid": job_id})
        self._poll_later(step, key, polls=0)

    def _wait(self, step: RecipeStep, error: BackendUnreachable) -> None:
        """Send the submission back to the queue, to try again after a growing delay."""
        assert self.settings is not None
        waits = _count(step.headers, WAITS_HEADER)
        delay = self.settings.delay(waits, self.settings.max_wait)
        assert self.backend is not None
        self.log.warning(
            "%s unreachable (%s); trying again in %g s", self.backend.kind, error, delay
        )
        headers = _kept_headers(step.headers)
        headers[WAITS_HEADER] = waits + 1
        step.checkpoint(
            step.message.payload if step.message else None, delay=delay, headers=headers
        )

    def _poll_later(self, step: RecipeStep, key: str, polls: int) -> None:
        assert self.settings is not None
        headers = _kept_headers(step.headers)
        headers.update({JOB_HEADER: key, POLL_HEADER: uuid.uuid4().hex, POLLS_HEADER: polls})
        delay = self.settings.delay(polls, self.settings.max_poll)
        step.checkpoint(
            step.message.payload if step.message else None, delay=delay, headers=headers
        )

    def poll(self, step: RecipeStep, key: str) -> None:
        assert self.jobs is not None and self.backend is not None
        poll_id = str(step.headers.get(POLL_HEADER, ""))
        polls = _count(step.headers, POLLS_HEADER)
        record = self.jobs.get(key)
        if record is None or record.job_id is None:
            self.log.warning("a poll for job record %s, which holds no job: dropped", key)
            return
        cancelled = self._cancelled(step, record.recipe_id)
        if record.state == "ended":
            if cancelled:
                return
            if record.reported_by == poll_id and record.outcome is not None:
                self._report(step, record.outcome)  # our report was never published
            return  # else another poll reported it (a message delivered twice)
        try:
            state = self._state_of(record.job_id)
        except BackendUnreachable as error:
            self.log.warning(
                "%s unreachable (%s); polling job %d later",
                self.backend.kind,
                error,
                record.job_id,
            )
            self._poll_later(step, key, polls + 1)
            return
        if state is not None and not state.ended:
            if cancelled:  # the cancellation found Slurm unreachable, or came too early
                self._cancel_job(record.job_id, str(record.recipe_id))
            self._poll_later(step, key, polls + 1)
            return
        assert self.backend is not None
        outcome = outcome_of(record.job_id, state, self.backend.kind)
        self.jobs.ended(key, outcome, poll_id)
        self._states.pop(record.job_id, None)
        self._forget(record)  # the record, committed, is all a report needs from now on
        if cancelled:
            self.log.info(
                "recipe %s was cancelled: the end of %s job %d (%s) is not reported",
                record.recipe_id,
                self.backend.kind,
                record.job_id,
                outcome["state"],
            )
            return
        self._report(step, outcome)

    def _forget(self, record: JobRecord) -> None:
        """Let the backend drop an ended job whose end is recorded (local job folders)."""
        assert self.backend is not None
        if record.job_id is None:
            return
        try:
            self.backend.forget(record.job_id, record.tag)
        except (BackendError, OSError) as error:  # the next start tries again
            self.log.warning(
                "could not forget %s job %d: %s", self.backend.kind, record.job_id, error
            )

    def _cancelled(self, step: RecipeStep, recipe_id: str | None) -> bool:
        """Whether ``recipe_id`` (the step's) was cancelled: as this service heard and
        recorded it, or as the runner knows (``step.cancelled``: a cancellation made
        while this service was down, which is then recorded)."""
        assert self.jobs is not None
        if self.jobs.is_cancelled(recipe_id):
            return True
        if step.cancelled and recipe_id is not None:
            self.jobs.cancel_recipe(recipe_id)
            return True
        return False

    def _state_of(self, job_id: int) -> JobState | None:
        """The job's state; one request reads every running job's, and serves them a moment."""
        assert self.backend is not None and self.settings is not None and self.jobs is not None
        now = time.monotonic()
        cached = self._states.get(job_id)
        # Fresh enough to serve another job's poll, never this job's next one.
        fresh = min(self.settings.state_cache, self.settings.max_poll / 2)
        if cached is not None and now - cached[0] < fresh:
            return cached[1]
        wanted = {record.job_id for record in self.jobs.active() if record.job_id is not None}
        wanted.add(job_id)
        states = self.backend.states(sorted(wanted))
        self._states = {found: (now, state) for found, state in states.items()}
        return states[job_id]

    def _report(self, step: RecipeStep, outcome: dict[str, Any]) -> None:
        channels = _channels(step)
        if "message" not in outcome:
            self.log.info("job %d completed", outcome["jobid"])
            if "job_completed" in channels:
                step.send_to("job_completed", outcome)
            return
        self.log.warning("%s", outcome["message"])
        for channel in ("failure", "error"):
            if channel in channels:
                step.send_to(channel, outcome)
                return
        self.log.warning(
            "step %s has no failure or error output: nobody is told that %s",
            step.pointer,
            outcome["message"],
        )


def _payload(step: RecipeStep) -> Any:
    return step.message.payload if step.message else None


def _channels(step: RecipeStep) -> list[str]:
    output = step.step.get("output")
    return list(output) if isinstance(output, dict) else []


def _count(headers: dict[str, Any], name: str) -> int:
    try:
        return max(0, int(headers.get(name) or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _kept_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers a message of ours carries on: not the broker's, the runner's retry count,
    nor our own markers (set afresh)."""
    kept = without_broker_headers(headers)
    for name in (*_OWN_HEADERS, ATTEMPT_HEADER, RETRY_REASON_HEADER, RECIPE_HEADER):
        kept.pop(name, None)
    return kept
