"""The supervisor in real processes: restarts, orphans, clean stops, shutdown, status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from zocalo.cli.shutdown import command as shutdown
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service.commands import command_matches, shutdown_commands
from zocalo.service.status import Status, Utilization, host_id
from zocalo.service.supervisor import backoff

pytestmark = pytest.mark.slow


def recipe(queue: str) -> Recipe:
    return Recipe(
        {"1": {"queue": queue, "output": 2}, "2": {"queue": f"{queue}.out"}, "start": [[1, {}]]}
    )


def send(transport, queue: str, payloads) -> None:
    outputs = []
    for payload in payloads:
        step = RecipeStep()
        step.start(Recipe({**recipe(queue).to_dict(), "start": [[1, payload]]}))
        outputs += step.outputs
    transport.publish(outputs).result(30)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): look at its state
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    return True


def test_worker_killed_is_restarted_and_works_again(
    supervised, client_url_transport, status_watch, collector
):
    supervisor = supervised("fleet_services:Passthrough", "--restart")
    first = status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid"), "an idle worker"
    )
    os.kill(first["worker_pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    second = status_watch.wait_for(
        lambda r: (
            r["status"] == Status.IDLE and r.get("worker_pid") not in (None, first["worker_pid"])
        ),
        "a restarted, idle worker",
    )
    print(f"\nrestart after kill -9 of the worker: {(time.monotonic() - killed_at) * 1000:.0f} ms")
    assert second["restarts"] == 1
    assert second["host"] == first["host"] and second["serviceclass"] == "Passthrough"
    out = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.work.out", out)
    send(client_url_transport, "fleet.work", [{"n": 1}])
    out.wait_for_count(1)
    assert supervisor.poll() is None


def test_killed_supervisor_leaves_no_orphan_holding_messages(
    supervised, client_url_transport, status_watch, collector, wait_until
):
    supervisor = supervised("fleet_services:Slow", "--stop-timeout", "2")
    report = status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid"), "an idle worker"
    )
    worker = report["worker_pid"]
    send(client_url_transport, "fleet.slow", [{"n": n, "hold": 60} for n in range(5)])
    status_watch.wait_for(lambda r: r["status"] == Status.PROCESSING, "a worker in its handler")
    os.kill(supervisor.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: process_gone(worker), "the orphaned worker to exit")
    print(
        f"\norphan gone {(time.monotonic() - killed_at) * 1000:.0f} ms after kill -9 of "
        "its supervisor"
    )
    back = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.slow", back, prefetch=10)
    returned = back.wait_for_count(5)
    assert sorted(json.loads(d.body)["payload"]["n"] for d in returned) == [0, 1, 2, 3, 4]
    assert all(d.redelivered for d in returned)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_stop_under_load_loses_nothing(
    supervised, client_url_transport, status_watch, collector, signum
):
    supervisor = supervised("fleet_services:Passthrough")
    status_watch.wait_for(lambda r: r["status"] == Status.IDLE, "an idle worker")
    out = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.work.out", out, prefetch=100)
    total = 2000
    send(client_url_transport, "fleet.work", [{"n": n} for n in range(total)])
    out.wait_for_count(50)  # mid-stream
    os.killpg(supervisor.pid, signum)  # as systemd or Slurm (or Ctrl-C) would
    assert supervisor.wait(30) == 0

    def drained(queue: str, sink) -> set[int]:
        """Every payload number in ``queue``: a sentinel sent now arrives after them all."""
        client_url_transport.send(queue, json.dumps({"sentinel": True}))
        everything = sink.wait_until(
            lambda ds: any(b"sentinel" in d.body for d in ds), f"the sentinel behind {queue}"
        )
        return {json.loads(d.body)["payload"]["n"] for d in everything if b"sentinel" not in d.body}

    handled = drained("fleet.work.out", out)  # outputs still on their way count too
    left = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.work", left, prefetch=500)
    leftover = drained("fleet.work", left)
    lost = set(range(total)) - handled - leftover
    print(
        f"\n{signal.Signals(signum).name}: handled {len(handled)}, returned {len(leftover)}, "
        f"lost {len(lost)}"
    )
    assert lost == set()


def test_shutdown_targets_a_service_class_then_a_host(
    supervised, client_url_transport, status_watch, sqlite_broker
):
    slow = supervised("fleet_services:Slow")
    fast = supervised("fleet_services:Passthrough")
    status_watch.wait_for(
        lambda r: r["serviceclass"] == "Slow" and r["status"] == Status.IDLE, "Slow idle"
    )
    passthrough = status_watch.wait_for(
        lambda r: r["serviceclass"] == "Passthrough" and r["status"] == Status.IDLE,
        "Passthrough idle",
    )
    result = CliRunner().invoke(shutdown, ["-s", "Slow", "--transport", sqlite_broker])
    assert result.exit_code == 0, result.output
    assert slow.wait(30) == 0
    assert fast.poll() is None, "only the targeted service class stops"
    status_watch.wait_for(
        lambda r: r["serviceclass"] == "Slow" and r["status"] == Status.TEARDOWN, "Slow's teardown"
    )
    result = CliRunner().invoke(shutdown, [passthrough["host"], "--transport", sqlite_broker])
    assert result.exit_code == 0, result.output
    assert fast.wait(30) == 0


def test_status_reports_carry_the_reference_fields(supervised, status_watch):
    supervised("fleet_services:Passthrough")
    report = status_watch.wait_for(lambda r: r["status"] == Status.IDLE, "an idle worker")
    # python-workflows' status monitor reads these fields (COMPAT 3.5)
    for key, kind in [
        ("host", str),
        ("status", int),
        ("statustext", str),
        ("service", str),
        ("serviceclass", str),
        ("utilization", dict),
        ("workflows", str),
    ]:
        assert isinstance(report[key], kind), key
    assert report["statustext"] == "idle"
    assert all(isinstance(k, str) and 0 <= v <= 1 for k, v in report["utilization"].items())
    assert report["host"].endswith(f".{report['pid']}")


def test_unit_rules():
    assert [backoff(n) for n in range(5)] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert backoff(50) == 60.0
    me = host_id(7)
    names = {"X", "pkg.X"}
    assert command_matches({"command": "shutdown", "host": me}, me, names)
    assert not command_matches({"command": "shutdown", "host": "other.1"}, me, names)
    assert command_matches({"command": "shutdown", "service": "X"}, me, names)
    assert command_matches({"command": "shutdown", "service": "pkg.X"}, me, names)
    assert not command_matches({"command": "shutdown", "service": "Y"}, me, names)
    assert not command_matches({"command": "shutdown"}, me, names), "no target: ignored"
    assert command_matches({"command": "shutdown", "all": True}, me, names)
    assert not command_matches(["shutdown"], me, names)
    assert shutdown_commands(("a.b.c.1",), ("none", "Mailer"), False) == [
        {"command": "shutdown", "host": "a.b.c.1"},
        {"command": "shutdown", "service": None},
        {"command": "shutdown", "service": "Mailer"},
    ]
    usage = Utilization(window=6)
    usage.record(Status.IDLE, at=0)
    usage.record(Status.PROCESSING, at=3)
    assert usage.report(now=6) == {"2": 0.5, "4": 0.5}


def test_a_crash_loop_is_reported_and_slowed_down(sqlite_broker, status_watch):
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "fleet_services:CrashOnStart",
            "--restart",
            "--transport",
            sqlite_broker,
        ],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        looping = status_watch.wait_for(
            lambda r: r.get("restarts", 0) >= 5, "five restarts", timeout=60
        )
        assert looping["status"] == Status.ERROR
    finally:
        os.killpg(supervisor.pid, signal.SIGTERM)
        _, errors = supervisor.communicate(timeout=30)
    assert "cannot reach the detector database" in errors
    assert "crash-looping" in errors
    delays = [float(d) for d in re.findall(r"restarting in ([0-9.]+) s", errors)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8], "each quick crash waits twice as long"


def test_a_service_that_cannot_be_loaded_is_not_restarted(sqlite_broker):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "SampleConsumer",
            "--restart",
            "--transport",
            sqlite_broker,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "not a zocalo Service" in result.stderr  # a python-workflows CommonService
    assert "not restarting" in result.stderr
    assert "restarting in" not in result.stderr


def test_a_shutdown_during_the_restart_delay_is_obeyed(supervised, status_watch, sqlite_broker):
    supervisor = supervised("fleet_services:CrashOnStart", "--restart")
    # From the fifth quick crash on the delay is long enough for a stand-in to speak
    # for the service: it says when the restart is due.
    waiting = status_watch.wait_for(
        lambda r: "restart_in" in r and r["serviceclass"] == "CrashOnStart",
        "the stand-in's status during a restart delay",
        timeout=60,
    )
    assert waiting["status"] == Status.ERROR and waiting["restarts"] >= 5
    assert waiting["host"] == host_id(supervisor.pid)
    result = CliRunner().invoke(shutdown, ["-s", "CrashOnStart", "--transport", sqlite_broker])
    assert result.exit_code == 0, result.output
    assert supervisor.wait(30) == 0, "the supervisor stops instead of restarting the service"


def maps_of(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_supervisor_stays_small_and_its_worker_is_a_fork(supervised, status_watch):
    """The supervisor holds no broker client, no site-config schema, no CLI library:
    those live in the worker, a fork sharing the supervisor's interpreter pages."""
    supervisor = supervised("fleet_services:Passthrough")
    report = status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid"), "an idle worker"
    )
    worker = report["worker_pid"]
    assert report["pid"] == supervisor.pid
    assert Path(f"/proc/{worker}/stat").read_text().split(")")[1].split()[1] == str(
        supervisor.pid
    ), "the worker is the supervisor's child"
    assert "_sqlite3" in maps_of(worker), "the worker holds the broker client"
    supervisor_maps = maps_of(supervisor.pid)
    for library in ("_sqlite3", "_ssl", "pydantic_core"):
        assert library not in supervisor_maps, f"the supervisor loaded {library}"
    assert Path(f"/proc/{supervisor.pid}/exe").resolve() == Path(f"/proc/{worker}/exe").resolve()


def test_a_shutdown_command_does_not_wait_behind_prefetched_messages(
    supervised, client_url_transport, status_watch, collector, sqlite_broker
):
    supervisor = supervised("fleet_services:Slow", "--stop-timeout", "30")
    status_watch.wait_for(lambda r: r["status"] == Status.IDLE, "an idle worker")
    send(client_url_transport, "fleet.slow", [{"n": n, "hold": 2} for n in range(5)])
    status_watch.wait_for(lambda r: r["status"] == Status.PROCESSING, "a message in hand")
    result = CliRunner().invoke(shutdown, ["-s", "Slow", "--transport", sqlite_broker])
    assert result.exit_code == 0, result.output
    assert supervisor.wait(30) == 0
    out = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.slow.out", out)
    back = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.slow", back, prefetch=10)
    everything = back.wait_for_count(4)
    handled = out.wait_for_count(1)
    # Only the message in hand was finished; the prefetched ones went back unhandled
    # (with the command queued behind them, all five would have been handled first).
    assert len(handled) == 1 and len(everything) == 4
    numbers = {json.loads(d.body)["payload"]["n"] for d in [*handled, *everything]}
    assert numbers == set(range(5))


def service_command(sqlite_broker: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "zocalo.cli.service", "--transport", sqlite_broker, *arguments]


def fleet_environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).parent))


def test_a_service_that_fails_to_build_is_logged_through_the_configured_format(sqlite_broker):
    result = subprocess.run(
        service_command(
            sqlite_broker, "-s", "fleet_services:BrokenConstructor", "--log-format", "json"
        ),
        env=fleet_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    (failure,) = [line for line in lines if "calibration file" in line.get("exception", "")]
    assert failure["level"] == "ERROR"
    assert failure["service"] == "fleet_services:BrokenConstructor"


def test_the_services_own_atexit_handlers_run_when_it_stops(supervised, status_watch, tmp_path):
    mark = tmp_path / "mark"
    supervisor = supervised("fleet_services:LeavesAMark", env={"FLEET_MARK": str(mark)})
    report = status_watch.wait_for(lambda r: r["status"] == Status.IDLE, "an idle worker")
    os.killpg(supervisor.pid, signal.SIGTERM)
    assert supervisor.wait(30) == 0
    assert mark.read_text() == f"cleaned up by {report['worker_pid']}"


def test_a_killed_worker_gives_the_shells_exit_status_and_ps_names_the_service(
    supervised, status_watch
):
    supervisor = supervised("fleet_services:Passthrough")
    report = status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid"), "an idle worker"
    )
    command_line = Path(f"/proc/{supervisor.pid}/cmdline").read_bytes().split(b"\0")
    assert b"fleet_services:Passthrough" in command_line
    assert b"-P" in command_line, "the working directory stays off sys.path"
    os.kill(report["worker_pid"], signal.SIGKILL)
    assert supervisor.wait(30) == 128 + signal.SIGKILL
