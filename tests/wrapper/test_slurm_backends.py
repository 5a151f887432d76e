"""Slurm backends against the session's real cluster: REST v0.0.38 and sbatch & co.

REST jobs run as slurmrestd's user (``nobody``), so they write only in the
cluster's job directories. Several jobs run at once in each test: a job takes
about a second to be scheduled and to end.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from zocalo.wrapper.slurm import (
    JobBackend,
    JobRefused,
    JobRequest,
    JobState,
    SlurmError,
    SlurmUnreachable,
    backend_for,
)
from zocalo.wrapper.slurm.cli import CommandLineBackend
from zocalo.wrapper.slurm.rest_v0_0_38 import RestV0038

#: Longest a job of these tests may take from submission to its end.
JOB_DEADLINE = 30.0


@pytest.fixture(params=["rest-v0.0.38", "cli"])
def backend(request, slurm_cluster, monkeypatch) -> JobBackend:
    if request.param == "cli":
        for name, value in slurm_cluster.environment.items():
            monkeypatch.setenv(name, value)
        return backend_for({"url": "local", "api_version": "cli"})
    return backend_for({"url": slurm_cluster.rest_url, "api_version": "v0.0.38"})


def job(directory: Path, script: str, **fields) -> JobRequest:
    return JobRequest(
        script=f"#!/bin/bash\n{script}\n",
        name=fields.pop("name", "zocalo-test"),
        working_directory=str(directory),
        standard_output=str(directory / "out.txt"),
        standard_error=str(directory / "err.txt"),
        environment={"PATH": "/usr/bin:/bin", "GREETING": "hello, world"},
        **fields,
    )


def wait_for_end(backend: JobBackend, job_ids: list[int]) -> dict[int, JobState | None]:
    deadline = time.monotonic() + JOB_DEADLINE
    pause = threading.Event()
    while True:
        states = backend.states(job_ids)
        if all(state is None or state.ended for state in states.values()):
            return states
        assert time.monotonic() < deadline, f"jobs still running: {states}"
        pause.wait(0.2)


def test_jobs_run_and_end_as_slurm_says(backend, slurm_cluster, request):
    directory = slurm_cluster.job_directory(request.node.name)
    (directory / "ok").mkdir(mode=0o777)
    (directory / "bad").mkdir(mode=0o777)
    (directory / "ok").chmod(0o777)
    (directory / "bad").chmod(0o777)
    succeeding = backend.submit(job(directory / "ok", 'echo "$GREETING" from $(pwd)'))
    failing = backend.submit(job(directory / "bad", "exit 3"))
    states = wait_for_end(backend, [succeeding, failing])
    assert states[succeeding] == JobState(succeeding, "COMPLETED", 0, None, "None")
    assert states[succeeding].succeeded
    assert (states[failing].state, states[failing].exit_code) == ("FAILED", 3)
    assert not states[failing].succeeded
    assert (directory / "ok" / "out.txt").read_text() == f"hello, world from {directory / 'ok'}\n"
    assert backend.state(succeeding) == states[succeeding]


def test_a_job_is_cancelled_and_found_by_its_comment(backend, slurm_cluster, request):
    directory = slurm_cluster.job_directory(request.node.name)
    comment = f"zocalo-test-{request.node.name}"
    job_id = backend.submit(job(directory, "sleep 60", comment=comment))
    assert backend.find(comment) == job_id
    assert backend.find("no-such-comment") is None
    backend.cancel(job_id)
    state = wait_for_end(backend, [job_id])[job_id]
    assert state is not None and state.state == "CANCELLED"
    backend.cancel(job_id)  # cancelling an ended job is no error


def test_a_job_slurm_does_not_know_is_none(backend):
    assert backend.state(987654) is None
    assert backend.states([987654, 987655]) == {987654: None, 987655: None}
    backend.cancel(987654)


def test_the_request_reaches_slurm_field_by_field(backend, slurm_cluster, request):
    directory = slurm_cluster.job_directory(request.node.name)
    job_id = backend.submit(
        job(
            directory,
            "sleep 30",
            name="field-check",
            cpus_per_task=2,
            tasks=3,
            nodes=1,
            memory_per_node=2048,
            time_limit=90,
            partition="debug",
            gpus=2,
            comment="fields",
        )
    )
    try:
        shown = slurm_cluster.command("scontrol", "show", "job", "--oneliner", str(job_id))
    finally:
        backend.cancel(job_id)
    fields = dict(word.split("=", 1) for word in shown.split() if "=" in word)
    assert fields["JobName"] == "field-check"
    assert fields["NumTasks"] == "3"
    assert fields["CPUs/Task"] == "2"
    assert fields["NumNodes"] in ("1", "1-1")  # pending jobs show the range asked for
    assert fields["TimeLimit"] == "01:30:00"
    assert fields["Partition"] == "debug"
    assert fields["Comment"] == "fields"
    assert fields["WorkDir"] == str(directory)
    assert fields["StdOut"] == str(directory / "out.txt")
    assert "mem=2G" in fields["TRES"]
    gpus = fields.get("TresPerJob") or fields.get("TresPerNode")
    assert gpus == "gres:gpu:2"


def test_a_request_slurm_refuses_is_job_refused(backend, slurm_cluster, request):
    directory = slurm_cluster.job_directory(request.node.name)
    with pytest.raises(JobRefused, match=r"[Ii]nvalid partition"):
        backend.submit(job(directory, "true", partition="nonesuch"))


def test_a_stopped_controller_is_unreachable_not_an_answer(slurm_cluster, request, monkeypatch):
    """Both backends, one stop of the controller (a start costs a few seconds)."""
    for name, value in slurm_cluster.environment.items():
        monkeypatch.setenv(name, value)
    backends = [
        RestV0038(backend_for({"url": slurm_cluster.rest_url, "api_version": "v0.0.38"}).client),
        CommandLineBackend(),
    ]
    directory = slurm_cluster.job_directory(request.node.name)
    running = backends[1].submit(job(directory, "sleep 60"))
    slurm_cluster.stop_controller()
    try:
        for backend in backends:
            for call in (
                lambda backend=backend: backend.submit(job(directory, "true")),
                lambda backend=backend: backend.state(running),
                lambda backend=backend: backend.cancel(running),
            ):
                with pytest.raises(SlurmUnreachable):
                    call()
    finally:
        slurm_cluster.start_controller()
    assert backends[0].state(running) is not None  # the controller kept its state
    backends[1].cancel(running)  # root's job: slurmrestd's user may not cancel it


def test_backend_for_reads_python_zocalos_slurm_section(tmp_path):
    token = tmp_path / "token"
    token.write_text("eyJ.e30.sig\n")
    rest = backend_for(
        {
            "url": "http://slurm:6820",
            "api_version": "v0.0.44",
            "user": "gda2",
            "user_token": str(token),
        }
    )
    assert rest.client.headers()["X-SLURM-USER-NAME"] == "gda2"
    assert rest.client.headers()["X-SLURM-USER-TOKEN"] == "eyJ.e30.sig"
    token.write_text("rotated")
    assert rest.client.headers()["X-SLURM-USER-TOKEN"] == "rotated"  # read at each request
    assert rest.name.endswith("(REST v0.0.44)")
    with pytest.raises(SlurmError, match=r"api_version 'v0\.0\.39' is not supported"):
        backend_for({"url": "http://slurm:6820", "api_version": "v0.0.39"})
    with pytest.raises(SlurmError, match="expected http://host:port"):
        backend_for({"url": "slurm:6820", "api_version": "v0.0.38"})


def test_an_unreachable_rest_address_is_unreachable(tmp_path):
    backend = backend_for({"url": f"unix://{tmp_path}/no.socket", "api_version": "v0.0.38"})
    with pytest.raises(SlurmUnreachable, match="No such file"):
        backend.state(1)


def test_a_job_slurm_forgot_is_read_from_the_completion_log(
    slurm_cluster, monkeypatch, request, tmp_path
):
    """``scontrol`` shows an ended job for ``MinJobAge`` (300 s here, too long to wait
    for); after that, with no accounting, only the job completion log (``sacct -c``,
    ``jobcomp/filetxt`` on this cluster) knows how it ended. The log is read as it is;
    a forgetful ``scontrol`` (the real one's answer for a job it no longer holds) stands
    in for the wait."""
    for name, value in slurm_cluster.environment.items():
        monkeypatch.setenv(name, value)
    directory = slurm_cluster.job_directory(request.node.name)
    backend = CommandLineBackend()
    scripts = {"ok": "true", "bad": "exit 3", "killed": "kill -KILL $$"}
    ids = {name: backend.submit(job(directory, script)) for name, script in scripts.items()}
    shown = wait_for_end(backend, list(ids.values()))
    logged = backend.completed(ids.values())
    for job_id, state in shown.items():
        assert state is not None
        expected = (state.state, state.exit_code, state.signal)
        assert (logged[job_id].state, logged[job_id].exit_code, logged[job_id].signal) == expected
    assert logged[ids["killed"]].signal == 9
    assert backend.completed([987654]) == {}

    forgetful = tmp_path / "bin"
    forgetful.mkdir()
    for tool in ("sacct", "squeue", "scancel", "sbatch"):
        (forgetful / tool).symlink_to(backend._tool(tool))
    scontrol = forgetful / "scontrol"
    scontrol.write_text(
        "#!/bin/sh\n"
        '[ "$#" -eq 3 ] && { echo "No jobs in the system"; exit 0; }\n'
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n"
    )
    scontrol.chmod(0o755)
    forgot = CommandLineBackend(bin_directory=str(forgetful))
    assert forgot.state(ids["bad"]) == logged[ids["bad"]]
    assert (forgot.state(ids["bad"]).state, forgot.state(ids["bad"]).exit_code) == ("FAILED", 3)
    assert forgot.states([ids["ok"], 987654]) == {ids["ok"]: logged[ids["ok"]], 987654: None}
