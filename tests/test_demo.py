"""The mini-facility demo: each data collection goes from the detector to one row of the
results database, on every broker, through a wrapped integration job (on the cluster
submission service's local runner when the services are processes); a stage that loses
or repeats work fails the run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from local_jobs import group_alive, job_groups, kill_local_jobs
from zocalo.demo import Board, DemoResult, DemoSettings, run_demo
from zocalo.demo.detector import TEMPLATE
from zocalo.demo.facility import RESULTS_QUERY
from zocalo.examples.integrate import integrate

COLLECTIONS, IMAGES = 3, 6
DCIDS = [1001, 1002, 1003]


def settings(tmp_path: Path, transport: str | None, **changes: object) -> DemoSettings:
    return DemoSettings(
        collections=COLLECTIONS,
        images=IMAGES,
        workers=2,
        transport=transport,
        workdir=tmp_path / "facility",
        join_timeout=changes.pop("join_timeout", 30.0),  # a lost image fails the test sooner
        **changes,  # type: ignore[arg-type]
    )


def memory() -> str:
    return f"memory://demo-{uuid.uuid4().hex}"


def database_rows(result: DemoResult) -> list[tuple[int, int, int]]:
    """(dcid, images, complete) of every row the README's sqlite3 command shows."""
    with sqlite3.connect(result.site / "results.db") as db:
        rows = db.execute(RESULTS_QUERY).fetchall()
    return sorted((dcid, images, complete) for dcid, _, images, _, _, complete in rows)


def recorded_intensities(result: DemoResult) -> dict[int, int]:
    with sqlite3.connect(result.site / "results.db") as db:
        rows = db.execute(RESULTS_QUERY).fetchall()
    return {dcid: intensity for dcid, _, _, _, intensity, _ in rows}


def assert_every_image_once(result: DemoResult) -> None:
    assert (result.lost, result.duplicates, result.dead_letters) == (0, 0, 0)
    assert result.completed == COLLECTIONS
    assert (result.images, result.images_recorded) == (COLLECTIONS * IMAGES,) * 2
    assert result.spots_found == result.spots_drawn > 0, "each image's spots, counted once"
    assert database_rows(result) == [(dcid, IMAGES, 1) for dcid in DCIDS]
    # The wrapped job's result went on down the recipe to the database and the reply.
    assert result.integrated == COLLECTIONS
    measured = {
        dcid: integrate(str(result.site / "images" / f"dc{dcid}"), TEMPLATE, 1, IMAGES)["intensity"]
        for dcid in DCIDS
    }
    assert recorded_intensities(result) == measured
    assert {o.dcid: o.intensity for o in result.collections} == measured
    assert len(list((result.site / "images").rglob("image_*.pgm"))) == COLLECTIONS * IMAGES
    # Each collection: the Dispatcher, the fan-out, Join and each image once, a summary and
    # a row: a stage that did anything twice (or not at all) changes the count.
    assert result.handled == COLLECTIONS * (1 + 1 + IMAGES + IMAGES + 1 + 1)
    samples = {stage: len(times) for stage, times in result.latencies_ms.items()}
    per_image = COLLECTIONS * IMAGES
    assert samples == {
        "dispatch": COLLECTIONS,
        "spot finding": per_image,
        "join": COLLECTIONS,
        "integration": COLLECTIONS,
        "database": COLLECTIONS,
        "reply": COLLECTIONS,
        "end to end": COLLECTIONS,
    }
    assert result.ok


@pytest.mark.parametrize("broker", ["memory", "sqlite"], ids=["threads-memory", "processes-sqlite"])
def test_every_collection_reaches_the_database_once(tmp_path, broker):
    transport = memory() if broker == "memory" else None  # None: a fresh embedded broker
    result = run_demo(settings(tmp_path, transport))
    assert_every_image_once(result)
    expected = "in-memory" if broker == "memory" else "embedded SQLite broker, one process"
    assert expected in result.broker
    if broker == "sqlite":
        log = (result.site / "services.log").read_text()
        assert log.count("service FindSpots started:") == 2, "one process per worker"
        assert_integrated_by_local_jobs(result)


def assert_integrated_by_local_jobs(result: DemoResult) -> None:
    """Each integration ran as a job of ClusterSubmission's local runner (no Slurm is
    configured), which wrote its end; a job whose end the service recorded (it may stop
    first: the reply does not wait for that) has no folder left; its wrapper logged to
    the job's run.out."""
    with sqlite3.connect(result.site / "cluster-jobs.db") as db:
        rows = db.execute("SELECT job_id, outcome FROM jobs").fetchall()
    recorded = {job_id: json.loads(outcome)["state"] for job_id, outcome in rows if outcome}
    folders = result.site / "cluster-jobs.local"
    unrecorded = {
        int(end.parent.name): json.loads(end.read_text())["state"]
        for end in folders.glob("*/end.json")
    }
    assert not set(recorded) & set(unrecorded), "a recorded job's folder is left"
    assert sorted({**recorded, **unrecorded}) == sorted(job_id for job_id, _ in rows)
    assert [*recorded.values(), *unrecorded.values()] == ["COMPLETED"] * COLLECTIONS
    for dcid in DCIDS:
        output = (result.site / "processing" / f"dc{dcid}" / "run.out").read_text()
        assert (
            "integrated: intensity"
            in output + (result.site / "processing" / f"dc{dcid}" / "run.err").read_text()
        )


def test_the_same_demo_runs_on_rabbitmq(tmp_path, rabbitmq_vhost_url):
    result = run_demo(settings(tmp_path, rabbitmq_vhost_url))
    assert_every_image_once(result)
    assert "amqp://" in result.broker
    assert_integrated_by_local_jobs(result)


def test_a_lost_image_is_reported_and_fails_the_run(tmp_path):
    lossy = {"demo.FindSpots": "demo_faults:LosesImageTwo"}
    result = run_demo(settings(tmp_path, memory(), join_timeout=1.0, replace=lossy))
    assert result.lost == COLLECTIONS, "image 2 of each collection"
    assert result.completed == 0
    assert database_rows(result) == [(dcid, IMAGES - 1, 0) for dcid in DCIDS]
    assert not result.ok


def test_work_done_twice_is_reported_and_fails_the_run(tmp_path):
    twice = {"demo.Summary": "demo_faults:SummarisesTwice"}
    result = run_demo(settings(tmp_path, memory(), replace=twice))
    assert result.duplicates == COLLECTIONS, "each reply came twice"
    assert database_rows(result) == [(dcid, IMAGES, 1) for dcid in DCIDS], "one row each"
    assert result.lost == 0
    assert not result.ok


def test_settings_that_cannot_run_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="at least 1 collection"):
        run_demo(DemoSettings(collections=0, workdir=tmp_path))
    with pytest.raises(ValueError, match=r"no demo service demo\.Nothing"):
        run_demo(DemoSettings(replace={"demo.Nothing": "x:Y"}, workdir=tmp_path))


class InterruptedAtTheFirstJob(Board):
    """Presses Ctrl-C (SIGINT to this process) once the first integration job's script
    runs; notes the process groups of that job."""

    def __init__(self, jobs: Path) -> None:
        super().__init__(DCIDS, IMAGES)
        self.jobs = jobs
        self.groups: list[int] = []

    def integrating(self, dcid: int, job: object) -> None:
        super().integrating(dcid, job)
        if self.groups:
            return
        folder, deadline = self.jobs / str(job), time.monotonic() + 30
        while len(job_groups(folder)) < 2 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        self.groups = job_groups(folder)
        os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_demo_leaves_no_job_running(tmp_path, monkeypatch):
    """Ctrl-C while a job runs (a job that would run for 10 minutes): the demo cancels
    its unfinished jobs, whole process groups, before it gives up."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # demo_faults, for services
    jobs = tmp_path / "facility" / "cluster-jobs.local"
    board = InterruptedAtTheFirstJob(jobs)
    hanging = settings(tmp_path, None, replace={"ClusterSubmission": "demo_faults:HangingJobs"})
    try:
        with pytest.raises(KeyboardInterrupt):
            run_demo(hanging, board)
        assert len(board.groups) == 2, "the job's script and runner were running"
        assert [group for group in board.groups if group_alive(group)] == []
    finally:
        kill_local_jobs(jobs)
