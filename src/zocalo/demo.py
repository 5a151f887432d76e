"""The demo: a three-service pipeline, a few dozen jobs, live progress, a summary.

Each job is one recipe: its ``start`` list fans out one message per image to
"find spots"; a per-job summary collects them; "record" writes the job to a
SQLite results file and tells the submitter. By default each service runs in
its own process, started with the ``zocalo.service`` command an operator
uses, on a fresh embedded broker, or on the broker ``url`` names; ``in_process``
runs them on threads on the in-memory broker instead.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zocalo.errors import UnsupportedFeature
from zocalo.examples.demo_services import FindSpots, Record, Summary
from zocalo.launch import ServiceProcesses, ServiceThreads
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import RunnerSettings, Service
from zocalo.transport.base import Delivery, Transport, dlq_name
from zocalo.transport.registry import create_transport, redact_url

DEMO_SERVICES: tuple[type[Service], ...] = (FindSpots, Summary, Record)
#: Their entry point names, as an operator would start them.
DEMO_SERVICE_NAMES = ("demo.FindSpots", "demo.Summary", "demo.Record")
DEMO_QUEUES = ("demo.find_spots", "demo.summary", "demo.record")


def demo_recipe(images: int, results: Path, done_queue: str) -> Recipe:
    """The demo recipe for one job of ``images`` images."""
    data = json.loads(resources.files("zocalo.examples").joinpath("demo_recipe.json").read_text())
    data["start"] = [[1, {"image": image}] for image in range(1, images + 1)]
    recipe = Recipe(data)
    recipe.apply_parameters({"images": images, "results": str(results), "done_queue": done_queue})
    return recipe


@dataclass
class DemoResult:
    """What the demo measured."""

    jobs: int
    images_per_job: int
    broker: str = ""
    #: Jobs per second asked for, and the seconds from the first submission to the last.
    rate: float = 0.0
    submit_seconds: float = 0.0
    completed: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    handled: int = 0
    dead_lettered: int = 0
    failed: int = 0

    @property
    def lost(self) -> int:
        return self.jobs - self.completed

    @property
    def messages_per_second(self) -> float:
        return self.handled / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        cuts = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
        return cuts[min(98, max(0, round(fraction * 100) - 1))]

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.dead_lettered == 0


class _Collector:
    """Receives the last step's messages: which jobs finished, and when."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.finished: dict[str, float] = {}
        self.condition = threading.Condition()

    def __call__(self, delivery: Delivery) -> None:
        body = json.loads(delivery.body)
        with self.condition:
            self.finished.setdefault(body["environment"]["ID"], time.monotonic())
            self.condition.notify_all()
        self.transport.ack(delivery)


class _DeadLetters:
    """The dead letters of one run, on a broker that cannot count a queue: the demo's
    dead-letter queues are watched during the run, nothing acknowledged (what was
    delivered returns to its queue when the watcher's connection closes)."""

    def __init__(self) -> None:
        self.recipes: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        try:
            recipe_id = json.loads(delivery.body)["environment"]["ID"]
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.recipes.append(recipe_id)

    def of(self, submitted: dict[str, float]) -> int:
        with self.lock:
            return sum(1 for recipe_id in self.recipes if recipe_id in submitted)


def run_demo(
    jobs: int = 40,
    images: int = 20,
    *,
    in_process: bool = False,
    url: str | None = None,
    rate: float = 20.0,
    timeout: float = 25.0,
    progress: Any = None,
) -> DemoResult:
    """Run the pipeline and measure it. ``rate``: jobs submitted per second; ``url``: the
    broker the services run on (default: a fresh embedded one)."""
    if jobs < 1 or images < 1 or not rate > 0:
        raise ValueError(
            f"the demo needs jobs >= 1, images >= 1, rate > 0; not {jobs}, {images}, {rate}"
        )
    if in_process and url is not None:
        raise ValueError("the demo runs in-process on its own in-memory broker: no url")
    result = DemoResult(jobs, images, rate=rate)
    done_queue = f"demo.done.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="zocalo-demo-") as workdir:
        if in_process:
            url = f"memory://demo-{uuid.uuid4().hex}"
            services: Any = ServiceThreads(DEMO_SERVICES, url, RunnerSettings(retry_delay=0.2))
            result.broker = "in-memory, services on threads"
        else:
            result.broker = (
                f"{redact_url(url)}, one process per service"
                if url
                else "embedded SQLite, one process per service"
            )
            url = url or f"sqlite:///{workdir}/broker.db"
            log = (Path(workdir) / "services.log").open("w")
            services = ServiceProcesses(DEMO_SERVICE_NAMES, url, log=log)
        recipe = demo_recipe(images, Path(workdir) / "results.sqlite", done_queue)
        with create_transport(url) as submitter, services:
            collector = _Collector(submitter)
            submitter.subscribe(done_queue, collector, prefetch=50)
            watched = _watch_dead_letters(submitter, (*DEMO_QUEUES, done_queue))
            submitted = _submit(submitter, recipe, jobs, rate, collector, progress)
            started = min(submitted.values())
            result.submit_seconds = max(submitted.values()) - started
            with collector.condition:
                collector.condition.wait_for(
                    lambda: _report(collector, jobs, progress), timeout=timeout
                )
                finished = dict(collector.finished)
            result.seconds = max(finished.values(), default=started) - started
            services.stop()
            if watched is None:
                result.dead_lettered = sum(
                    submitter.depth(dlq_name(queue)) for queue in (*DEMO_QUEUES, done_queue)
                )
            else:
                result.dead_lettered = watched.of(submitted)
        result.handled = sum(stats.get("handled", 0) for stats in services.stats.values())
        result.failed = sum(stats.get("failed", 0) for stats in services.stats.values())
    result.completed = sum(1 for recipe_id in submitted if recipe_id in finished)
    result.latencies_ms = sorted(
        (finished[rid] - submitted[rid]) * 1000 for rid in submitted if rid in finished
    )
    return result


def _watch_dead_letters(submitter: Transport, queues: tuple[str, ...]) -> _DeadLetters | None:
    """None if the broker counts queues (the dead-letter queues' depths are read after
    the run); else a watcher of the dead-letter queues (see :class:`_DeadLetters`)."""
    try:
        submitter.queue_stats()
        return None
    except UnsupportedFeature:
        watched = _DeadLetters()
        for queue in queues:
            submitter.subscribe(dlq_name(queue), watched, prefetch=1000)
        return watched


def _submit(
    submitter: Transport,
    recipe: Recipe,
    jobs: int,
    rate: float,
    collector: _Collector,
    progress: Any,
) -> dict[str, float]:
    """Start ``jobs`` copies of ``recipe`` at ``rate`` per second; when each was sent."""
    submitted: dict[str, float] = {}
    begin = time.monotonic()
    pause = threading.Event()
    for number in range(jobs):
        pause.wait(max(0.0, begin + number / rate - time.monotonic()))
        step = RecipeStep()
        recipe_id = step.start(recipe)
        submitted[recipe_id] = time.monotonic()
        submitter.publish(step.outputs).result(10)
        with collector.condition:
            _report(collector, jobs, progress)
    return submitted


def _report(collector: _Collector, jobs: int, progress: Any) -> bool:
    if progress is not None:
        progress(len(collector.finished), jobs)
    return len(collector.finished) >= jobs
