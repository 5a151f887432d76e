"""The demo: a three-service pipeline, a few dozen jobs, live progress, a summary.

Each job is one recipe: its ``start`` list fans out one message per image to
"find spots"; a per-job summary collects them; "record" writes the job to a
SQLite results file and tells the submitter. The services run on threads of
this process on the in-memory broker.
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

from zocalo.examples.demo_services import FindSpots, Record, Summary
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.transport.base import Delivery, Transport, dlq_name
from zocalo.transport.registry import create_transport

DEMO_SERVICES: tuple[type[Service], ...] = (FindSpots, Summary, Record)
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


def run_demo(
    jobs: int = 40,
    images: int = 20,
    url: str | None = None,
    timeout: float = 25.0,
    progress: Any = None,
) -> DemoResult:
    """Run the pipeline on ``url`` (a fresh in-memory broker by default)."""
    url = url or f"memory://demo-{uuid.uuid4().hex}"
    result = DemoResult(jobs, images)
    done_queue = f"demo.done.{uuid.uuid4().hex[:8]}"
    settings = RunnerSettings(retry_delay=0.2)
    runners = [ServiceRunner(cls(), create_transport(url), settings) for cls in DEMO_SERVICES]
    threads = [
        threading.Thread(target=r.run, name=f"demo-{r.service.name}", daemon=True) for r in runners
    ]
    with tempfile.TemporaryDirectory(prefix="zocalo-demo-") as workdir:
        results_file = Path(workdir) / "results.sqlite"
        with create_transport(url) as submitter:
            collector = _Collector(submitter)
            submitter.subscribe(done_queue, collector, prefetch=50)
            for thread, runner in zip(threads, runners, strict=True):
                thread.start()
                runner.started.wait(10)
            recipe = demo_recipe(images, results_file, done_queue)
            submitted: dict[str, float] = {}
            started = time.monotonic()
            for _ in range(jobs):
                step = RecipeStep()
                recipe_id = step.start(recipe)
                submitted[recipe_id] = time.monotonic()
                submitter.publish(step.outputs).result(10)
            deadline = started + timeout
            with collector.condition:
                while len(collector.finished) < jobs and time.monotonic() < deadline:
                    if progress is not None:
                        progress(len(collector.finished), jobs)
                    collector.condition.wait(0.1)
            result.seconds = time.monotonic() - started
            if progress is not None:
                progress(len(collector.finished), jobs)
            finished = dict(collector.finished)
            for runner in runners:
                runner.request_stop()
            for thread in threads:
                thread.join(10)
            result.dead_lettered = sum(
                _depth(submitter, dlq_name(queue)) for queue in (*DEMO_QUEUES, done_queue)
            )
    result.completed = sum(1 for recipe_id in submitted if recipe_id in finished)
    result.latencies_ms = sorted(
        (finished[rid] - submitted[rid]) * 1000 for rid in submitted if rid in finished
    )
    for runner in runners:
        stats = runner.stats.snapshot()
        result.handled += stats["handled"]
        result.failed += stats["failed"]
    return result


def _depth(transport: Transport, queue: str) -> int:
    depth = getattr(transport, "depth", None)
    return depth(queue) if depth else 0
