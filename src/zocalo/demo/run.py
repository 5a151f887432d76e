"""One run of the mini-facility: start its services, acquire, submit, watch, measure.

For each data collection the simulated detector writes the images, the facility
records the collection in its database, and a processing request goes to the
Dispatcher exactly as ``zocalo.go -r mini-facility DCID`` sends it. The services
are the ones an operator runs (``zocalo.service -s NAME``), one process each and
``workers`` spot finders, on a fresh embedded broker in the facility's folder or
on the broker given; an in-process broker (``memory://``) runs them on threads.

Each collection's integration is a wrapped long job: ClusterSubmission runs
``zocalo.wrap --wrap demo.integrate`` on its local runner (no Slurm is configured),
and the wrapper's results go on to the database. On an in-process broker, which
no job process could reach, :class:`~zocalo.examples.integration.IntegrateHere`
runs the same wrapper on a thread instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from zocalo.config import load_configuration
from zocalo.demo.board import Board
from zocalo.demo.detector import Collection, Detector
from zocalo.demo.facility import RECIPE, Site
from zocalo.demo.result import CollectionOutcome, DemoResult
from zocalo.demo.watch import Reply, Watcher
from zocalo.dlq.listing import queue_listing
from zocalo.errors import ZocaloError
from zocalo.examples.lookup import DATABASE_VARIABLE
from zocalo.launch import ServiceProcesses, ServiceThreads
from zocalo.service import RunnerSettings
from zocalo.service.discovery import load_service
from zocalo.services import cluster_submission, dbwriter, join
from zocalo.submission import DISPATCHER_QUEUE, processing_request
from zocalo.transport.base import Capability, Transport
from zocalo.transport.dead_letters import dlq_name
from zocalo.transport.registry import create_transport, redact_url, transport_class

#: Seconds the demo should take here with its defaults.
BUDGET_SECONDS = 30.0
#: Seconds the demo waits at its end for cancelled jobs to stop (SIGKILL comes after 5).
JOB_STOP_SECONDS = 15.0
FIRST_DCID = 1001
BEAMLINE = "sim01"
SPOT_FINDER = "demo.FindSpots"
#: Runs each collection's wrapped integration job (on its local runner).
JOBS = "ClusterSubmission"
#: What runs the wrapped step instead on an in-process broker.
JOBS_IN_PROCESS = "demo.IntegrateHere"
#: The facility's services, in the order they start (the spot finder ``workers`` times).
SERVICES = (
    "Dispatcher",
    "demo.Images",
    SPOT_FINDER,
    "Join",
    "demo.Summary",
    JOBS,
    "DatabaseWriter",
)
#: Services whose handled messages are not counted: the job service's polls follow each
#: job as long as it runs, so their number says nothing of work done twice.
_UNCOUNTED = ("ClusterSubmission", "IntegrateHere")
#: The queues of the flow, whose dead letters the demo counts.
QUEUES = (
    DISPATCHER_QUEUE,
    "demo.images",
    "demo.find_spots",
    join.QUEUE,
    "demo.summary",
    cluster_submission.QUEUE,
    dbwriter.QUEUE,
)
#: Variables a user may have set that would send the demo's services elsewhere.
_FOREIGN_VARIABLES = ("ZOCALO_CONFIG", "ZOCALO_DEFAULT_ENV")


@dataclass(frozen=True)
class DemoSettings:
    """What to run."""

    collections: int = 8
    images: int = 20
    workers: int = 2
    #: The broker (None: a fresh embedded broker in the facility's folder).
    transport: str | None = None
    #: The facility's folder (None: a new temporary folder, kept afterwards).
    workdir: Path | None = None
    #: Seconds Join waits for the last image of a collection.
    join_timeout: float = 30.0
    #: Images the detector writes per second, at most.
    frame_rate: float = 50.0
    #: Stand-ins for services of :data:`SERVICES` (name -> entry point or ``module:Class``).
    replace: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError, in one line, for settings that cannot run."""
        if self.collections < 1 or self.images < 1 or self.workers < 1:
            raise ValueError(
                "the demo needs at least 1 collection, 1 image and 1 worker; not "
                f"{self.collections}, {self.images}, {self.workers}"
            )
        if not (self.join_timeout > 0 and self.frame_rate > 0):
            raise ValueError("join_timeout and frame_rate must be above 0")
        unknown = sorted(set(self.replace) - set(SERVICES))
        if unknown:
            raise ValueError(f"no demo service {', '.join(unknown)} to replace")

    @property
    def dcids(self) -> list[int]:
        return list(range(FIRST_DCID, FIRST_DCID + self.collections))

    def service_names(self, in_process: bool = False) -> list[str]:
        """Every service to start, replacements in place, the spot finder once per worker;
        ``in_process``: the wrapped step's stand-in instead of ClusterSubmission."""
        defaults = {JOBS: JOBS_IN_PROCESS} if in_process else {}
        names = []
        for name in SERVICES:
            copies = self.workers if name == SPOT_FINDER else 1
            names += [self.replace.get(name, defaults.get(name, name))] * copies
        return names


def run_demo(settings: DemoSettings | None = None, board: Board | None = None) -> DemoResult:
    """Run the mini-facility once; ``board`` (if given) follows every collection live."""
    settings = settings or DemoSettings()
    settings.check()
    began = time.monotonic()
    given = transport_class(settings.transport) if settings.transport else None  # a bad URL
    in_process = given is not None and Capability.CROSS_PROCESS not in given.capabilities
    site = Site.create(settings.workdir or Path(tempfile.mkdtemp(prefix="zocalo-demo-")))
    url = settings.transport or site.broker_url
    board = board or Board(settings.dcids, settings.images)
    try:
        with create_transport(url) as client:
            board.set_phase(f"starting {len(settings.service_names(in_process))} services")
            with _services(settings, site, url, in_process) as services:
                watcher = Watcher(client, board)
                watcher.start()
                dead_before, _ = _dead_letters(url, client)
                board.set_phase("acquiring and submitting")
                collections, submitted = _acquire_and_submit(settings, site, client, watcher, board)
                board.set_phase("waiting for the last replies")
                watcher.wait(len(collections), settings.join_timeout + 30)
                site.wait_for_jobs(timeout=30)
                _wait_until_idle(client, [*QUEUES, watcher.queue], timeout=30)
                board.set_phase("stopping the services")
                services.stop()
                dead_after, note = _dead_letters(url, client)
                replies, repeated = dict(watcher.replies), sum(watcher.repeated.values())
    finally:
        # Nothing of the demo outlives it: an interrupt (Ctrl-C), or a wait for the
        # jobs that ran out, leaves jobs running; they are cancelled, whole.
        site.stop_jobs(timeout=JOB_STOP_SECONDS)
    board.set_phase("done")
    stats = services.stats
    counted = int(sum(counters.get("dead_lettered", 0) for counters in stats.values()))
    result = DemoResult(
        collections=_outcomes(collections, submitted, replies, site),
        images_per_collection=settings.images,
        workers=settings.workers,
        broker=_describe_broker(url, settings.transport is None, in_process),
        site=site.root,
        sqlite3_command=site.sqlite3_command(),
        dead_letters=max(dead_after - dead_before, counted),
        dead_letters_note=note,
        repeated_replies=repeated,
        handled=int(
            sum(
                counters.get("handled", 0)
                for name, counters in stats.items()
                if name not in _UNCOUNTED
            )
        ),
    )
    result.latencies_ms = _latencies(submitted, replies, site.written_at())
    result.seconds = time.monotonic() - began
    return result


# -- the services -----------------------------------------------------------------


def _service_environment(site: Site) -> dict[str, str]:
    """Where the services find the facility's databases (whatever the user has set)."""
    return {
        DATABASE_VARIABLE: site.results_url,
        join.DATABASE_VARIABLE: site.join_url,
        dbwriter.DATABASE_VARIABLE: site.results_url,
        cluster_submission.JOBS_VARIABLE: str(site.cluster_jobs),
    }


@contextlib.contextmanager
def _services(
    settings: DemoSettings, site: Site, url: str, in_process: bool
) -> Iterator[ServiceProcesses | ServiceThreads]:
    if not in_process:
        environment = {
            key: value for key, value in os.environ.items() if key not in _FOREIGN_VARIABLES
        }
        environment.update(_service_environment(site))
        with (
            site.log.open("w") as log,
            ServiceProcesses(
                settings.service_names(),
                url,
                log=log,
                options=["--config", str(site.config)],
                env=environment,
            ) as processes,
        ):
            yield processes
        return
    config = load_configuration(site.config)
    with _variables(_service_environment(site)), _logging_to(site.log):
        instances = []
        for name in settings.service_names(in_process=True):
            service = load_service(name)()
            service.site_config = config
            instances.append(service)
        with ServiceThreads(instances, url, RunnerSettings(retry_delay=0.2)) as threads:
            yield threads


@contextlib.contextmanager
def _variables(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the services on threads; as they were afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """The services on threads log to the facility's log file, as the processes do."""
    logger = logging.getLogger("zocalo")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _describe_broker(url: str, fresh: bool, in_process: bool) -> str:
    if in_process:
        return "in-memory, services on threads"
    where = "a fresh embedded SQLite broker" if fresh else redact_url(url)
    return f"{where}, one process per service"


# -- acquiring and submitting -------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A processing request sent: for which data collection, when."""

    dcid: int
    sent_at: float


def _acquire_and_submit(
    settings: DemoSettings, site: Site, client: Transport, watcher: Watcher, board: Board
) -> tuple[list[Collection], dict[str, Request]]:
    """Acquire each data collection, record it, request its processing; the collections,
    and the requests by recipe ID."""
    detector = Detector(site.images, settings.frame_rate)
    collections: list[Collection] = []
    submitted: dict[str, Request] = {}
    for dcid in settings.dcids:
        collection = detector.acquire(dcid, settings.images, partial(board.acquired, dcid))
        site.record_collection(collection, BEAMLINE)
        collections.append(collection)
        request = processing_request([RECIPE], {"join_timeout": settings.join_timeout}, dcid=dcid)
        assert request.recipe_id is not None
        watcher.expect(request.recipe_id, dcid)
        submitted[request.recipe_id] = Request(dcid, time.time())
        request.send(client, timeout=30)
        board.submitted(dcid)
    return collections, submitted


def _wait_until_idle(client: Transport, queues: list[str], timeout: float) -> None:
    """Wait until no message of the flow waits or is being handled (the job service's
    delayed polls aside), so that work done twice arrives before the services stop. A
    broker that cannot count its queues is not waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = client.queue_stats()
        except ZocaloError:
            return
        if all(s.ready + s.in_flight == 0 for s in stats if s.queue in queues):
            return
        time.sleep(0.05)


# -- counting -----------------------------------------------------------------------------


def _dead_letters(url: str, client: Transport) -> tuple[int, str]:
    """Messages in the flow's dead-letter queues, and why they could not be counted ("" if
    they were). The run counts the increase, and also what the services say they
    dead-lettered (RabbitMQ's management API may report a queue's depth late)."""
    try:
        with queue_listing(url, client) as listing:
            held = listing.dead_letter_queues()
    except ZocaloError as error:
        return 0, f"the services' own count: the broker's queues cannot be listed ({error})"
    return sum(held.get(dlq_name(queue), 0) for queue in QUEUES), ""


def _outcomes(
    collections: list[Collection],
    submitted: dict[str, Request],
    replies: dict[str, Reply],
    site: Site,
) -> list[CollectionOutcome]:
    """Each collection: what was taken, what the reply says, what the database holds."""
    recipes = {request.dcid: recipe_id for recipe_id, request in submitted.items()}
    rows = site.recorded()
    outcomes = []
    for collection in collections:
        recipe_id = recipes.get(collection.dcid, "")
        mine = [row for row in rows if row.dcid == collection.dcid]
        outcome = CollectionOutcome(
            collection.dcid,
            collection.images,
            collection.spots_drawn,
            recipe_id=recipe_id,
            rows=len(mine),
            recorded_images=mine[0].images if len(mine) == 1 else 0,
        )
        reply = replies.get(recipe_id)
        if reply is not None:
            outcome.replied = True
            outcome.complete = bool(reply.payload.get("complete"))
            outcome.replied_images = int(reply.payload.get("images", 0))
            outcome.replied_spots = int(reply.payload.get("spots", 0))
            intensity = reply.payload.get("intensity")
            outcome.intensity = intensity if isinstance(intensity, int) else None
        outcomes.append(outcome)
    return outcomes


def _latencies(
    submitted: dict[str, Request], replies: dict[str, Reply], written_at: dict[str, float]
) -> dict[str, list[float]]:
    """Milliseconds each stage took, per collection (per image for spot finding)."""
    samples: dict[str, list[float]] = {}

    def add(stage: str, start: Any, end: Any) -> None:
        if isinstance(start, int | float) and isinstance(end, int | float):
            samples.setdefault(stage, []).append((end - start) * 1000)

    for recipe_id, reply in replies.items():
        times = reply.payload.get("times") or {}
        sent, dispatched = submitted[recipe_id].sent_at, times.get("dispatched_at")
        found, summarised = times.get("found_at") or [], times.get("summarised_at")
        integrated = times.get("integrated_at")
        written = written_at.get(recipe_id)
        add("dispatch", sent, dispatched)
        for moment in found:
            add("spot finding", dispatched, moment)
        add("join", max(found, default=None), summarised)
        add("integration", summarised, integrated)
        add("database", integrated, written)
        add("reply", written, reply.arrived_at)
        add("end to end", sent, reply.arrived_at)
    return samples
