"""ClusterSubmission on its local runner (no Slurm): the same promises as on Slurm.

A job succeeds and its results continue down the recipe; one fails and takes the
failure (or error) branch; ``zocalo cancel`` stops one; the service killed with -9
while a job runs, and restarted, still reports the job's end. On the embedded
broker, and the success on RabbitMQ too. The service polls every 0.3 s here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_recipes import OUTPUT_QUEUES, Outputs, start_recipe, submission_recipe, wait_for

from local_jobs import group_alive, kill_local_jobs
from zocalo.cli.main import cli
from zocalo.config import load_configuration
from zocalo.recipe.model import Recipe
from zocalo.recipe.wire import encode, recipe_headers
from zocalo.services.cluster_backend import backend_for_site
from zocalo.services.cluster_jobs import JobBook
from zocalo.services.cluster_submission import QUEUE, ClusterSettings, ClusterSubmission
from zocalo.transport import create_transport
from zocalo.wrapper.backends.base import BackendError, JobRequest
from zocalo.wrapper.backends.local import LocalBackend
from zocalo.wrapper.slurm.cli import CommandLineBackend

POLL = 0.3
ZOCALO_WRAP = Path(sys.executable).parent / "zocalo.wrap"


@pytest.fixture
def jobs_folder(tmp_path: Path):
    """Where the local runner keeps its jobs; any job still running at the end is killed
    (each runs in a session of its own, outside the test's process group)."""
    folder = tmp_path / "jobs.local"
    yield folder
    kill_local_jobs(folder)


@pytest.fixture
def broker(sqlite_broker):
    transport = create_transport(sqlite_broker)
    transport.connect()
    yield transport
    transport.close()


@pytest.fixture
def outputs(broker, collector) -> Outputs:
    return Outputs(broker, collector)


@pytest.fixture
def run_service(start_service, sqlite_broker, tmp_path, jobs_folder):
    def start(url: str = sqlite_broker) -> ClusterSubmission:
        settings = ClusterSettings(jobs=tmp_path / "jobs.db", max_poll=POLL, max_wait=POLL)
        service = ClusterSubmission(backend=LocalBackend(jobs_folder), settings=settings)
        start_service(service, url, retry_delay=0.05)
        return service

    return start


def wrapped(work: Path, url: str, command: list[str]) -> dict:
    """A step whose job runs ``zocalo.wrap --wrap command``, which runs ``command``."""
    return {
        "cluster": {
            "commands": [
                f"date +%s.%N > {work}/started",
                f"{ZOCALO_WRAP} --wrap command --recipewrapper $RECIPEWRAP -t {url}",
                f"date +%s.%N > {work}/ended",
            ],
            "job_name": "local-test",
            "time_limit": "0:05:00",
        },
        "wrapper": str(work / ".recipewrap"),
        "workingdir": str(work),
        "command": command,
    }


def test_a_local_job_succeeds_and_its_results_continue_down_the_recipe(
    run_service, broker, outputs, sqlite_broker, tmp_path, jobs_folder
):
    """Also measures the time from the message to the running job, from the job's start
    to the wrapper's success reaching the next step, and from the job's end (its script's
    last line) to the next step receiving ``job_completed``."""
    run_service()
    work = tmp_path / "job"
    parameters = wrapped(work, sqlite_broker, ["sh", "-c", "echo 42 > spots.txt; echo found 42"])
    parameters["output_files"] = ["spots.txt"]
    sent = time.time()
    start_recipe(broker, submission_recipe(parameters))
    (submitted,) = outputs.wait("job_submitted")
    (success,) = outputs.wait("success")
    (completed,) = outputs.wait("job_completed")
    assert completed == {"jobid": submitted["jobid"], "state": "COMPLETED", "exit_code": 0}
    assert success["stdout"] == "found 42"
    assert (work / "spots.txt").read_text() == "42\n"
    assert outputs.payloads("failure") == outputs.payloads("error") == []
    # Its end is in the job record (committed before the report went out), so the job's
    # folder, and its entry in the comment index, are gone.
    assert not (jobs_folder / str(submitted["jobid"])).exists()
    assert list((jobs_folder / "by-comment").iterdir()) == []
    started = float((work / "started").read_text())
    ended = float((work / "ended").read_text())
    timing = {
        "bench": "cluster-submission",
        "backend": "local",
        "message_to_running_s": round(started - sent, 3),
        "job_start_to_wrapper_success_s": round(outputs.arrived("success") - started, 3),
        "job_end_to_next_step_s": round(outputs.arrived("job_completed") - ended, 3),
        "poll_s": POLL,
    }
    print(json.dumps(timing))


def test_on_rabbitmq_a_local_job_reports_down_the_recipe(
    rabbitmq_vhost_url, run_service, collector, tmp_path
):
    """(The vhost fixture comes first: the service stops before the test's queues go.)"""
    broker = create_transport(rabbitmq_vhost_url)
    broker.connect()
    try:
        for queue in (QUEUE, *OUTPUT_QUEUES.values()):
            broker.declare_queue(queue)
        outputs = Outputs(broker, collector)
        run_service(rabbitmq_vhost_url)
        work = tmp_path / "job"
        start_recipe(
            broker, submission_recipe(wrapped(work, rabbitmq_vhost_url, ["echo", "{image}"]))
        )
        (submitted,) = outputs.wait("job_submitted")
        assert outputs.wait("success")[0]["stdout"] == "1"
        (completed,) = outputs.wait("job_completed")
        assert completed["jobid"] == submitted["jobid"]
    finally:
        broker.close()


def test_failed_and_killed_local_jobs_take_the_failure_or_error_branch(
    run_service, broker, outputs, tmp_path
):
    run_service()
    failing, killed = tmp_path / "failing", tmp_path / "killed"
    start_recipe(
        broker,
        submission_recipe(
            {"cluster": {"commands": "echo trying; exit 3"}, "workingdir": str(failing)}
        ),
    )
    start_recipe(
        broker,
        submission_recipe(
            {"cluster": {"commands": "kill -KILL $$"}, "workingdir": str(killed)},
            channels=("job_submitted", "error"),  # no failure output: the error one
        ),
    )
    (failure,) = outputs.wait("failure")
    assert (failure["state"], failure["exit_code"]) == ("FAILED", 3)
    assert failure["message"] == (
        f"local job {failure['jobid']} FAILED, exit code 3, reason NonZeroExitCode"
    )
    assert (failing / "run.out").read_text() == "trying\n"
    (error,) = outputs.wait("error")
    assert (error["state"], error["signal"]) == ("FAILED", signal.SIGKILL)
    assert outputs.payloads("job_completed") == []


def test_zocalo_cancel_stops_a_local_job_and_reports_nothing_of_it(
    run_service, broker, outputs, sqlite_broker, tmp_path, jobs_folder, caplog
):
    service = run_service()
    work = tmp_path / "sleeper"
    recipe = Recipe(
        submission_recipe(
            {"cluster": {"commands": f"touch {work}/running; sleep 60"}, "workingdir": str(work)}
        )
    )
    recipe_id = "cancel-a-local-job"
    broker.send(QUEUE, encode(recipe, 1, [], {"ID": recipe_id}, {}), headers=recipe_headers())
    (submitted,) = outputs.wait("job_submitted")
    wait_for((work / "running").exists, "the job to run")
    assert service.backend is not None
    wait_for(lambda: service.backend.state(submitted["jobid"]).state == "RUNNING", "RUNNING")
    script = json.loads((jobs_folder / str(submitted["jobid"]) / "script.json").read_text())
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(cli, ["cancel", recipe_id, "-t", sqlite_broker])
        assert result.exit_code == 0, result.output
        assert service.jobs is not None
        wait_for(
            lambda: [r for r in service.jobs.of_recipe(recipe_id) if r.state == "ended"],
            "the job's end to be recorded",
        )
        unreported = f"the end of local job {submitted['jobid']} (CANCELLED) is not reported"
        wait_for(  # (logged just after the end is recorded)
            lambda: any(unreported in line.getMessage() for line in caplog.records),
            "the log line",
        )
    (record,) = service.jobs.of_recipe(recipe_id)
    assert record.outcome is not None and record.outcome["state"] == "CANCELLED"
    assert not group_alive(script["pid"]), "the job's whole process group is gone"
    assert outputs.payloads("failure") == outputs.payloads("error") == []
    assert outputs.payloads("job_completed") == []


def test_a_service_killed_while_its_local_job_runs_reports_the_end_after_a_restart(
    supervised, broker, outputs, tmp_path, jobs_folder
):
    """kill -9 of the whole service (supervisor and worker); the job, in a session of its
    own, runs on; a fresh service (chosen by ``cluster: backend: local``) reports its end."""
    config = tmp_path / "zocalo.yaml"
    config.write_text(
        "version: 1\n"
        "jobs:\n"
        "  plugin: cluster\n"
        "  backend: local\n"
        f"  jobs: {jobs_folder}\n"
        "environments:\n"
        "  default: [jobs]\n"
    )
    environment = {
        "ZOCALO_CONFIG": str(config),
        "ZOCALO_CLUSTER_JOBS": str(tmp_path / "jobs.db"),
        "ZOCALO_CLUSTER_POLL": str(POLL),
    }
    work = tmp_path / "job"
    service = supervised("ClusterSubmission", env=environment)
    start_recipe(
        broker,
        submission_recipe(
            {
                "cluster": {"commands": f"touch {work}/running; sleep 3; touch {work}/done"},
                "workingdir": str(work),
            }
        ),
    )
    (submitted,) = outputs.wait("job_submitted")
    wait_for((work / "running").exists, "the job to run")
    os.killpg(service.pid, signal.SIGKILL)
    service.wait(10)
    end = jobs_folder / str(submitted["jobid"]) / "end.json"
    wait_for(end.exists, "the job to end while no service runs")
    assert (work / "done").exists()
    assert outputs.payloads("job_completed") == []
    supervised("ClusterSubmission", env=environment)
    (completed,) = outputs.wait("job_completed")
    assert completed == {"jobid": submitted["jobid"], "state": "COMPLETED", "exit_code": 0}


def test_the_site_configuration_chooses_the_backend(tmp_path):
    """No slurm section: this host. A cluster section decides; slurm without its section
    is refused in one line."""

    def plugins(text: str) -> dict:
        path = tmp_path / "site.yaml"
        path.write_text("version: 1\n" + text)
        return load_configuration(path).plugins

    local = backend_for_site(plugins(""), tmp_path / "default.local")
    assert isinstance(local, LocalBackend) and local.root == tmp_path / "default.local"
    slurm = "s:\n  plugin: slurm\n  url: local\n  api_version: cli\n"
    on_slurm = plugins(slurm + "environments:\n  default: [s]\n")
    assert isinstance(backend_for_site(on_slurm, tmp_path / "x"), CommandLineBackend)
    forced = plugins(
        slurm + "c:\n  plugin: cluster\n  backend: local\nenvironments:\n  default: [s, c]\n"
    )
    assert isinstance(backend_for_site(forced, tmp_path / "x"), LocalBackend)
    bounded = plugins(
        "c:\n  plugin: cluster\n  backend: local\n  max_jobs: 2\n"
        + "environments:\n  default: [c]\n"
    )
    assert backend_for_site(bounded, tmp_path / "x").max_jobs == 2
    wanting = plugins("c:\n  plugin: cluster\n  backend: slurm\nenvironments:\n  default: [c]\n")
    with pytest.raises(BackendError, match="no 'slurm' section is active"):
        backend_for_site(wanting, tmp_path / "x")


def test_at_start_the_service_forgets_jobs_whose_end_it_recorded_and_names_what_it_ignores(
    run_service, tmp_path, jobs_folder, caplog
):
    """A stop between recording a job's end and forgetting it leaves the job's folder: the
    next start removes it (the record holds all a report needs), and no other job's. The
    local backend takes Slurm's resources and ignores them, which the start says once."""
    backend = LocalBackend(jobs_folder)
    job = JobRequest(
        "#!/bin/sh\ntrue\n", "x", str(tmp_path), str(tmp_path / "o"), str(tmp_path / "e")
    )
    recorded = backend.submit(replace(job, comment="zocalo-recorded"))
    unrecorded = backend.submit(replace(job, comment="zocalo-unrecorded"))
    for job_id in (recorded, unrecorded):
        wait_for(lambda job_id=job_id: backend.state(job_id).ended, "the job to end")
    book = JobBook(tmp_path / "jobs.db")
    for key, job_id in (("recorded", recorded), ("unrecorded", unrecorded)):
        book.intend(key, f"zocalo-{key}", "a-recipe", 1)
        book.submitted(key, job_id)
    book.ended("recorded", {"jobid": recorded, "state": "COMPLETED", "exit_code": 0}, "a-poll")
    book.close()
    with caplog.at_level(logging.INFO):
        run_service()
        wait_for(lambda: not (jobs_folder / str(recorded)).exists(), "the folder to go")
    assert (jobs_folder / str(unrecorded) / "end.json").exists(), "its end is not reported yet"
    ignoring = [line.getMessage() for line in caplog.records if "ignored" in line.getMessage()]
    assert ignoring == [
        "local jobs run as they come: their cpus_per_task, tasks, nodes, memory_per_node, "
        "partition, prefer, gpus are accepted and ignored"
    ]
