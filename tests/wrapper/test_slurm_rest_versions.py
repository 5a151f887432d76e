"""REST API v0.0.40-v0.0.44 spellings, which this machine's Slurm 22.05 cannot serve.

A stand-in slurmrestd answers with the JSON shapes of the OpenAPI models
(python-zocalo's generated models for v0.0.40 and v0.0.44): it checks what we
send, over TCP with the token headers, and hands back what such a server would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from zocalo.wrapper.slurm import JobRequest, JobState, SlurmUnreachable, backend_for
from zocalo.wrapper.slurm.rest_v0_0_40 import job_description, job_state

REQUEST = JobRequest(
    script="#!/bin/bash\necho hi\n",
    name="Class2D-EM",
    working_directory="/data/class2d",
    standard_output="/data/class2d/run.out",
    standard_error="/data/class2d/run.err",
    environment={"USER": "gda2", "PATH": "/bin:/usr/bin"},
    cpus_per_task=8,
    tasks=1,
    nodes=1,
    memory_per_node=96000,
    time_limit=180,
    partition="cs05r",
    gpus=1,
    comment="zocalo-abc",
)


def test_a_request_in_v0_0_40_spelling():
    assert job_description(REQUEST) == {
        "name": "Class2D-EM",
        "current_working_directory": "/data/class2d",
        "standard_output": "/data/class2d/run.out",
        "standard_error": "/data/class2d/run.err",
        "environment": ["USER=gda2", "PATH=/bin:/usr/bin"],
        "cpus_per_task": 8,
        "tasks": 1,
        "nodes": "1",
        "memory_per_node": {"set": True, "infinite": False, "number": 96000},
        "time_limit": {"set": True, "infinite": False, "number": 180},
        "partition": "cs05r",
        "tres_per_job": "gres/gpu:1",
        "comment": "zocalo-abc",
    }


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            {
                "job_id": 7,
                "job_state": ["FAILED"],
                "exit_code": {
                    "status": ["EXITED"],
                    "return_code": {"set": True, "infinite": False, "number": 3},
                    "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""},
                },
                "state_reason": "NonZeroExitCode",
            },
            JobState(7, "FAILED", 3, None, "NonZeroExitCode"),
        ),
        (
            {
                "job_id": 8,
                "job_state": ["CANCELLED", "COMPLETING"],
                "exit_code": {
                    "status": ["SIGNALED"],
                    "return_code": {"set": True, "number": 0},
                    "signal": {"id": {"set": True, "number": 15}, "name": "TERM"},
                },
            },
            JobState(8, "CANCELLED", 0, 15, None),
        ),
        ({"job_id": 9, "job_state": ["RUNNING"]}, JobState(9, "RUNNING", None, None, None)),
    ],
)
def test_job_states_in_v0_0_40_spelling(job, expected):
    assert job_state(job) == expected


class _StandIn(BaseHTTPRequestHandler):
    """Answers as slurmrestd v0.0.44 would; records each request."""

    seen: list[dict[str, Any]]

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append(
            {"method": self.command, "path": self.path, "body": body, "headers": dict(self.headers)}
        )

    def do_POST(self) -> None:
        self._record()
        self._answer(200, {"job_id": 41, "step_id": "batch", "errors": [], "warnings": []})

    def do_GET(self) -> None:
        self._record()
        if self.path.endswith("/job/41"):
            job = {"job_id": 41, "job_state": ["COMPLETED"], "comment": "zocalo-abc"}
            job["exit_code"] = {"status": ["EXITED"], "return_code": {"set": True, "number": 0}}
            self._answer(200, {"jobs": [job], "errors": []})
        elif self.path.endswith("/jobs"):
            jobs = [{"job_id": 41, "job_state": ["RUNNING"], "comment": "zocalo-abc"}]
            self._answer(200, {"jobs": jobs, "errors": []})
        else:
            error = {"error_number": 2017, "error": "Invalid job id specified"}
            self._answer(500, {"jobs": [], "errors": [error]})

    def do_DELETE(self) -> None:
        self._record()
        self._answer(200, {"errors": []})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_StandIn,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join()


def test_v0_0_44_over_tcp_with_a_token(stand_in):
    url, seen = stand_in
    backend = backend_for(
        {"url": url, "api_version": "v0.0.44", "user": "gda2", "user_token": "eyJ.e30.x"}
    )
    assert backend.submit(REQUEST) == 41
    assert backend.state(41) == JobState(41, "COMPLETED", 0, None, None)
    assert backend.state(42) is None
    assert backend.states([41, 42]) == {41: JobState(41, "RUNNING", None, None, None), 42: None}
    assert backend.find("zocalo-abc") == 41
    backend.cancel(41)
    paths = [(request["method"], request["path"]) for request in seen]
    assert paths == [
        ("POST", "/slurm/v0.0.44/job/submit"),
        ("GET", "/slurm/v0.0.44/job/41"),
        ("GET", "/slurm/v0.0.44/job/42"),
        ("GET", "/slurm/v0.0.44/jobs"),
        ("GET", "/slurm/v0.0.44/jobs"),
        ("DELETE", "/slurm/v0.0.44/job/41"),
    ]
    submitted = seen[0]
    assert submitted["body"] == {"script": REQUEST.script, "job": job_description(REQUEST)}
    assert submitted["headers"]["X-SLURM-USER-NAME"] == "gda2"
    assert submitted["headers"]["X-SLURM-USER-TOKEN"] == "eyJ.e30.x"


def test_a_path_prefix_is_kept_and_a_closed_port_is_unreachable(stand_in):
    url, _ = stand_in
    backend = backend_for({"url": f"{url}/not-here/", "api_version": "v0.0.40"})
    assert backend.submit(REQUEST) == 41
    assert stand_in[1][-1]["path"] == "/not-here/slurm/v0.0.40/job/submit"
    closed = backend_for({"url": "http://127.0.0.1:1", "api_version": "v0.0.40"})
    with pytest.raises(SlurmUnreachable, match="refused"):
        closed.state(1)
