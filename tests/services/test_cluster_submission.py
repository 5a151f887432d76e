"""ClusterSubmission on the session's real Slurm cluster, with the embedded (SQLite) broker.

Jobs submitted through sbatch run as root and can run ``zocalo.wrap`` from this
virtual environment; jobs submitted through slurmrestd run as ``nobody``, in the
cluster's job directories. The service polls every 0.3 s here (30 s at most by
default), so a job's end reaches the recipe within a poll.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cluster_recipes import OUTPUT_QUEUES, Outputs, start_recipe, submission_recipe, wait_for

from zocalo.cli.main import cli
from zocalo.recipe.model import Recipe
from zocalo.recipe.wire import decode, encode, recipe_headers
from zocalo.services.cluster_submission import (
    JOB_HEADER,
    POLL_HEADER,
    QUEUE,
    ClusterSettings,
    ClusterSubmission,
)
from zocalo.transport import create_transport, dlq_name
from zocalo.transport.base import DLQ_REASON_HEADER
from zocalo.wrapper.slurm import backend_for

POLL = 0.3
ZOCALO_WRAP = Path(sys.executable).parent / "zocalo.wrap"


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
def slurm_environment(slurm_cluster, monkeypatch) -> None:
    """The sbatch backend (and its jobs) find the cluster through SLURM_CONF."""
    for name, value in slurm_cluster.environment.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def run_service(start_service, sqlite_broker, slurm_cluster, slurm_environment, tmp_path):
    """``run_service("rest" | "cli")``: ClusterSubmission on a thread of this process."""

    def start(api: str = "rest") -> ClusterSubmission:
        section = (
            {"url": slurm_cluster.rest_url, "api_version": "v0.0.38"}
            if api == "rest"
            else {"url": "local", "api_version": "cli"}
        )
        settings = ClusterSettings(jobs=tmp_path / "jobs.db", max_poll=POLL, max_wait=POLL)
        service = ClusterSubmission(backend=backend_for(section), settings=settings)
        start_service(service, sqlite_broker, retry_delay=0.05)
        return service

    return start


def jobs_tagged(slurm_cluster, tag_prefix: str = "zocalo-") -> list[str]:
    listing = slurm_cluster.command("squeue", "--noheader", "--states=all", "--format=%i|%k")
    return [line for line in listing.splitlines() if line.split("|")[1].startswith(tag_prefix)]


def test_a_job_succeeds_and_its_results_continue_down_the_recipe(
    run_service, broker, outputs, sqlite_broker, tmp_path, slurm_cluster
):
    """zocalo.wrap runs CommandWrapper in the job; its results go on down the recipe.

    Also measures the time from the message to the running job, and from the job's
    end (its script's last line) to the next step receiving ``job_completed``.
    """
    run_service("cli")
    work = tmp_path / "job"
    commands = [
        f"date +%s.%N > {work}/started",
        f"{ZOCALO_WRAP} --wrap command --recipewrapper $RECIPEWRAP -t {sqlite_broker}",
        f"date +%s.%N > {work}/ended",
    ]
    parameters = {
        "cluster": {"commands": commands, "job_name": "spots", "time_limit": "0:05:00"},
        "wrapper": str(work / ".recipewrap"),
        "workingdir": str(work),
        "command": ["sh", "-c", "echo 42 > spots.txt; echo found 42"],
        "output_files": ["spots.txt"],
    }
    sent = time.time()
    start_recipe(broker, submission_recipe(parameters))
    (submitted,) = outputs.wait("job_submitted")
    (success,) = outputs.wait("success")
    (completed,) = outputs.wait("job_completed")
    assert completed == {"jobid": submitted["jobid"], "state": "COMPLETED", "exit_code": 0}
    assert success["stdout"] == "found 42"
    assert success["output_files"][0]["exists"] is True
    assert (work / "spots.txt").read_text() == "42\n"
    assert outputs.payloads("failure") == []
    started = float((work / "started").read_text())
    ended = float((work / "ended").read_text())
    timing = {
        "bench": "cluster-submission",
        "backend": "sbatch",
        "message_to_running_s": round(started - sent, 3),
        "job_start_to_wrapper_success_s": round(outputs.arrived("success") - started, 3),
        "job_end_to_next_step_s": round(outputs.arrived("job_completed") - ended, 3),
        "poll_s": POLL,
    }
    print(json.dumps(timing))


def test_on_rabbitmq_the_job_polls_ride_its_delays(
    rabbitmq_vhost_url, start_service, slurm_environment, collector, tmp_path
):
    """The same service and recipe on RabbitMQ: polls are delayed messages there too.

    (The vhost fixture comes first: the service stops before the test's queues go.)"""
    broker = create_transport(rabbitmq_vhost_url)
    broker.connect()
    try:
        for queue in (QUEUE, *OUTPUT_QUEUES.values()):
            broker.declare_queue(queue)
        outputs = Outputs(broker, collector)
        settings = ClusterSettings(jobs=tmp_path / "jobs.db", max_poll=POLL, max_wait=POLL)
        section = {"url": "local", "api_version": "cli"}
        service = ClusterSubmission(backend=backend_for(section), settings=settings)
        start_service(service, rabbitmq_vhost_url, retry_delay=0.05)
        work = tmp_path / "job"
        parameters = {
            "cluster": {
                "commands": f"{ZOCALO_WRAP} --wrap command --recipewrapper $RECIPEWRAP "
                f"-t {rabbitmq_vhost_url}"
            },
            "wrapper": str(work / ".recipewrap"),
            "workingdir": str(work),
            "command": ["echo", "{image}"],
        }
        start_recipe(broker, submission_recipe(parameters))
        (submitted,) = outputs.wait("job_submitted")
        assert outputs.wait("success")[0]["stdout"] == "1"
        (completed,) = outputs.wait("job_completed")
        assert completed["jobid"] == submitted["jobid"]
    finally:
        broker.close()


def test_failed_and_cancelled_jobs_take_the_failure_or_error_branch(
    run_service, broker, outputs, slurm_cluster, request
):
    run_service("rest")
    failing = slurm_cluster.job_directory(f"{request.node.name}-failing")
    sleeping = slurm_cluster.job_directory(f"{request.node.name}-sleeping")
    start_recipe(
        broker,
        submission_recipe(
            {"cluster": {"commands": "echo trying; exit 3"}, "workingdir": str(failing)}
        ),
    )
    start_recipe(
        broker,
        submission_recipe(
            {"cluster": {"commands": ["sleep 60"]}, "workingdir": str(sleeping)},
            channels=("job_submitted", "error"),  # no failure output: the error one
        ),
    )
    submitted = {p["jobid"] for p in outputs.wait("job_submitted", 2)}
    (failure,) = outputs.wait("failure")
    assert failure["jobid"] in submitted
    assert (failure["state"], failure["exit_code"]) == ("FAILED", 3)
    assert (
        failure["message"]
        == f"Slurm job {failure['jobid']} FAILED, exit code 3, reason NonZeroExitCode"
    )
    assert (failing / "run.out").read_text() == "trying\n"
    (sleeper,) = submitted - {failure["jobid"]}
    wait_for(
        lambda: "RUNNING" in slurm_cluster.command("squeue", "-h", "-j", str(sleeper), "-o", "%T"),
        "the sleeping job to run",
    )
    slurm_cluster.command("scancel", str(sleeper))
    (cancelled,) = outputs.wait("error")
    assert (cancelled["jobid"], cancelled["state"]) == (sleeper, "CANCELLED")
    assert outputs.payloads("job_completed") == []


def test_a_job_slurm_no_longer_knows_is_reported_gone(run_service, broker, outputs, tmp_path):
    """As after the service was away longer than Slurm keeps ended jobs (MinJobAge)."""
    service = run_service("rest")
    assert service.jobs is not None
    service.jobs.intend("lost-job", "zocalo-lost-job", "recipe-1", 1)
    service.jobs.submitted("lost-job", 987654)
    recipe = Recipe(submission_recipe({"cluster": {"commands": "true"}, "workingdir": "/tmp"}))
    body = _body(recipe, "recipe-1")
    headers = recipe_headers({JOB_HEADER: "lost-job", POLL_HEADER: "poll-1"})
    broker.send(QUEUE, body, headers=headers)
    (gone,) = outputs.wait("failure")
    assert gone == {
        "jobid": 987654,
        "state": "UNKNOWN",
        "exit_code": None,
        "message": "Slurm job 987654 disappeared: Slurm no longer knows it",
    }


def test_a_message_delivered_twice_submits_one_job_and_reports_once(
    run_service, broker, outputs, slurm_cluster, request, wait_until
):
    run_service("rest")
    directory = slurm_cluster.job_directory(request.node.name)
    recipe = Recipe(
        submission_recipe({"cluster": {"commands": "sleep 1"}, "workingdir": str(directory)})
    )
    body = _body(recipe, f"twice-{request.node.name}")
    for _ in range(2):  # as a broker redelivers a message whose ack was lost
        broker.send(QUEUE, body, headers=recipe_headers())
    first, second = outputs.wait("job_submitted", 2)
    assert first == second
    outputs.wait("job_completed")
    # Both messages' polls have run out once the queue is empty and nothing is in hand.
    wait_until(lambda: _idle(broker, QUEUE), "the polls to end", timeout=30)
    assert len(outputs.payloads("job_completed")) == 1
    assert len(jobs_tagged(slurm_cluster, "zocalo-")) >= 1
    assert [line.split("|")[0] for line in jobs_tagged(slurm_cluster)].count(
        str(first["jobid"])
    ) == 1


def test_step_parameters_that_describe_no_job_go_to_the_dlq_with_the_reason(
    run_service, broker, collector, tmp_path
):
    run_service("rest")
    dead = collector(ack_with=broker)
    broker.subscribe(dlq_name(QUEUE), dead)
    start_recipe(
        broker, submission_recipe({"cluster": {"commands": "true"}, "workingdir": "relative/dir"})
    )
    (delivery,) = dead.wait_for_count(1, timeout=30)
    reason = delivery.headers[DLQ_REASON_HEADER]
    assert "BadSubmission: workingdir must be an absolute path, not 'relative/dir'" in reason


def test_slurm_stopped_while_a_message_waits_loses_nothing(
    run_service, broker, outputs, slurm_cluster, request, caplog
):
    run_service("cli")
    directory = slurm_cluster.job_directory(request.node.name)
    slurm_cluster.stop_controller()
    try:
        with caplog.at_level(logging.WARNING):
            start_recipe(
                broker,
                submission_recipe({"cluster": {"commands": "true"}, "workingdir": str(directory)}),
            )
            wait_for(
                lambda: sum("Slurm unreachable" in r.getMessage() for r in caplog.records) >= 2,
                "two attempts to find Slurm unreachable",
            )
    finally:
        slurm_cluster.start_controller()
    (submitted,) = outputs.wait("job_submitted")
    (completed,) = outputs.wait("job_completed")
    assert completed["jobid"] == submitted["jobid"]


def test_a_service_killed_while_its_job_runs_reports_the_end_after_a_restart(
    supervised, broker, outputs, slurm_cluster, tmp_path, request
):
    """kill -9 of the whole service (supervisor and worker), then a fresh one."""
    config = tmp_path / "zocalo.yaml"
    config.write_text(
        "version: 1\n"
        "cluster:\n"
        "  plugin: slurm\n"
        f"  url: {slurm_cluster.rest_url}\n"
        "  api_version: v0.0.38\n"
        "environments:\n"
        "  default: [cluster]\n"
    )
    environment = {
        "ZOCALO_CONFIG": str(config),
        "ZOCALO_CLUSTER_JOBS": str(tmp_path / "jobs.db"),
        "ZOCALO_CLUSTER_POLL": str(POLL),
        **slurm_cluster.environment,
    }
    directory = slurm_cluster.job_directory(request.node.name)
    service = supervised("ClusterSubmission", env=environment)
    start_recipe(
        broker,
        submission_recipe(
            {
                "cluster": {"commands": f"touch {directory}/running; sleep 3"},
                "workingdir": str(directory),
            }
        ),
    )
    (submitted,) = outputs.wait("job_submitted")
    wait_for((directory / "running").exists, "the job to run")
    os.killpg(service.pid, 9)
    service.wait(10)
    job = str(submitted["jobid"])
    wait_for(
        lambda: (
            slurm_cluster.command("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").strip()
            == "COMPLETED"
        ),
        "the job to end while no service runs",
    )
    assert outputs.payloads("job_completed") == []
    supervised("ClusterSubmission", env=environment)
    (completed,) = outputs.wait("job_completed")
    assert completed == {"jobid": submitted["jobid"], "state": "COMPLETED", "exit_code": 0}


def test_zocalo_cancel_cancels_the_recipes_jobs_and_drops_its_later_steps(
    run_service, broker, outputs, slurm_cluster, sqlite_broker, request, caplog
):
    service = run_service("rest")
    directory = slurm_cluster.job_directory(request.node.name)
    recipe = Recipe(
        submission_recipe({"cluster": {"commands": "sleep 60"}, "workingdir": str(directory)})
    )
    recipe_id = f"cancel-{request.node.name}"
    broker.send(QUEUE, _body(recipe, recipe_id), headers=recipe_headers())
    (submitted,) = outputs.wait("job_submitted")
    job = str(submitted["jobid"])
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(cli, ["cancel", recipe_id, "-t", sqlite_broker])
        assert result.exit_code == 0, result.output
        assert service.jobs is not None
        wait_for(
            lambda: [r for r in service.jobs.of_recipe(recipe_id) if r.state == "ended"],
            "the job's end to be recorded",
        )
        state = slurm_cluster.command("squeue", "-h", "-t", "all", "-j", job, "-o", "%T")
        assert state.strip() == "CANCELLED"
        # A later step of the cancelled recipe is dropped: no job, one log line.
        broker.send(QUEUE, _body(recipe, recipe_id), headers=recipe_headers())
        wait_for(
            lambda: any("was cancelled: step 1 dropped" in r.getMessage() for r in caplog.records),
            "the later step to be dropped",
        )
    assert outputs.payloads("failure") == outputs.payloads("error") == []
    assert len(outputs.payloads("job_submitted")) == 1
    assert any(
        f"the end of Slurm job {job} (CANCELLED) is not reported" in r.getMessage()
        for r in caplog.records
    )


def test_a_cancellation_made_while_the_service_is_down_cancels_the_job_at_its_next_poll(
    start_service,
    broker,
    outputs,
    slurm_cluster,
    slurm_environment,
    sqlite_broker,
    request,
    tmp_path,
    caplog,
):
    """The broker kept the cancellation: the restarted service's runner replays it, and
    the job's next poll (``step.cancelled``) cancels the job and reports nothing of it."""
    section = {"url": slurm_cluster.rest_url, "api_version": "v0.0.38"}

    def start() -> tuple[ClusterSubmission, Any]:
        settings = ClusterSettings(jobs=tmp_path / "jobs.db", max_poll=POLL, max_wait=POLL)
        service = ClusterSubmission(backend=backend_for(section), settings=settings)
        return service, start_service(service, sqlite_broker, retry_delay=0.05)

    _, runner = start()
    directory = slurm_cluster.job_directory(request.node.name)
    recipe = Recipe(
        submission_recipe({"cluster": {"commands": "sleep 60"}, "workingdir": str(directory)})
    )
    recipe_id = f"cancel-{request.node.name}"
    broker.send(QUEUE, _body(recipe, recipe_id), headers=recipe_headers())
    (submitted,) = outputs.wait("job_submitted")
    job = str(submitted["jobid"])
    runner.request_stop()
    wait_for(lambda: not runner.transport.connected, "the service to stop")
    result = CliRunner().invoke(cli, ["cancel", recipe_id, "-t", sqlite_broker])
    assert result.exit_code == 0, result.output
    with caplog.at_level(logging.INFO):
        service, _ = start()
        assert service.jobs is not None
        wait_for(
            lambda: [r for r in service.jobs.of_recipe(recipe_id) if r.state == "ended"],
            "the job's end to be recorded",
        )
    state = slurm_cluster.command("squeue", "-h", "-t", "all", "-j", job, "-o", "%T")
    assert state.strip() == "CANCELLED"
    assert service.jobs.is_cancelled(recipe_id)
    assert outputs.payloads("failure") == outputs.payloads("error") == []
    assert any(
        f"the end of Slurm job {job} (CANCELLED) is not reported" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("recipe_file", "parameters", "expected"),
    [
        (
            "clem-tiff-to-stack-wrapper.json",
            {"session_dir": "{tmp}", "job_name": "grid1", "tiff_file": "a.tiff"},
            {
                "JobName": "tiff-to-stack",
                "NumTasks": "1",
                "CPUs/Task": "1",
                "TimeLimit": "03:00:00",
                "WorkDir": "{tmp}/processed",
                "StdOut": "{tmp}/tmp/run.out",
                "mem": "mem=32G",
                "gpus": None,
                "wrapper": "{tmp}/tmp/.recipewrap--clem_tiff_to_stack--grid1",
                "wrap": "-w CLEMTIFFToStack",
            },
        ),
        (
            "em-spa-class2d-wrapper.json",
            {"class2d_dir": "{tmp}/Class2D/job010", "partition_preference": "", "nr_iter": 25},
            {
                "JobName": "Class2D-EM",
                "NumTasks": "1",
                "CPUs/Task": "8",
                "TimeLimit": "03:00:00",
                "WorkDir": "{tmp}/Class2D/job010",
                "StdOut": "{tmp}/Class2D/job010/run.out",
                "mem": "mem=96000M",
                "gpus": "gres:gpu:1",
                "wrapper": "{tmp}/Class2D/job010/.recipewrap",
                "wrap": "-w Class2D",
            },
        ),
    ],
)
def test_cryoem_services_recipes_run_unchanged(
    recipe_file, parameters, expected, run_service, broker, tmp_path, slurm_cluster, caplog
):
    """DiamondLightSource/cryoem-services recipes/ispyb/*-wrapper.json (BSD-3-Clause,
    Diamond Light Source), as published, with the parameters a Dispatcher would give.

    Their jobs run ``cryoemservices.wrap``, which this machine lacks, so each job fails
    (exit status 127): what is checked is everything the submission service does.
    """
    service = run_service("cli")
    expected = {key: v and v.replace("{tmp}", str(tmp_path)) for key, v in expected.items()}
    recipe = Recipe((Path(__file__).parent / "recipes" / recipe_file).read_text())
    recipe.apply_parameters(
        {
            "partition": "debug",
            "user": "root",
            "config_file": "/dls_sw/apps/cryoem/config.yaml",
            "feedback_queue": "murfey_feedback",
            **{key: str(v).replace("{tmp}", str(tmp_path)) for key, v in parameters.items()},
        }
    )
    with caplog.at_level(logging.INFO):
        recipe_id = start_recipe(broker, recipe)
        assert service.jobs is not None
        record = wait_for(
            lambda: [r for r in service.jobs.of_recipe(recipe_id) if r.state == "ended"],
            "the job to end",
        )[0]
    assert record.outcome is not None and record.outcome["exit_code"] == 127
    job = str(record.job_id)
    shown = slurm_cluster.command("scontrol", "show", "job", "--oneliner", job)
    fields = dict(word.split("=", 1) for word in shown.split() if "=" in word)
    for name in ("JobName", "NumTasks", "CPUs/Task", "TimeLimit", "WorkDir", "StdOut"):
        assert fields[name] == expected[name], name
    assert fields["Partition"] == "debug"
    assert expected["mem"] in fields["TRES"]
    assert fields.get("TresPerJob") == expected["gpus"]
    wrapper_file = Path(expected["wrapper"])
    assert wrapper_file.stat().st_mode & 0o777 == 0o600, "it holds the whole message: private"
    message = decode(wrapper_file.read_bytes(), recipe_headers(), "recipe-wrapper file")
    assert (message.pointer, message.recipe_id) == (1, recipe_id)
    assert message.step["parameters"]["cluster"]["job_name"] == expected["JobName"]
    script = slurm_cluster.command("scontrol", "write", "batch_script", job, "-")
    assert (
        f'cryoemservices.wrap {expected["wrap"]} -r "{wrapper_file}" '
        "-c /dls_sw/apps/cryoem/config.yaml >runinfo 2>&1"
    ) in script
    runinfo = Path(expected["WorkDir"]) / "runinfo"
    assert "cryoemservices.wrap: command not found" in runinfo.read_text()
    assert any("has no failure or error output" in r.getMessage() for r in caplog.records)


def _body(recipe: Recipe, recipe_id: str) -> bytes:
    return encode(recipe, 1, [], {"ID": recipe_id}, {"image": 1})


def _idle(broker: Any, queue: str) -> bool:
    return all(
        stats.ready + stats.delayed + stats.in_flight == 0
        for stats in broker.queue_stats()
        if stats.queue == queue
    )
