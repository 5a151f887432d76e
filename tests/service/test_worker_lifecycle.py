"""Shutdown commands, handler time limits and memory recycling, in real supervised processes."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from fleet_services_helpers import StatusWatch

from transport_params import transports
from two_step_jobs import send_two_step
from zocalo.cli.shutdown import command as shutdown
from zocalo.service.status import STATUS_TOPIC, Status
from zocalo.transport import Transport, create_transport

pytestmark = pytest.mark.slow


@pytest.fixture(params=transports("sqlite", "rabbitmq"))
def any_broker(request: pytest.FixtureRequest, sqlite_broker: str) -> str:
    """The broker URL of each transport that carries commands between processes."""
    if request.param == "sqlite":
        return sqlite_broker
    return request.getfixturevalue("rabbitmq_vhost_url")


@pytest.fixture
def on_broker(any_broker: str) -> Iterator[tuple[str, Transport, StatusWatch]]:
    """(url, a client connection, the status broadcasts seen on it)."""
    with create_transport(any_broker) as client:
        watch = StatusWatch()
        client.subscribe_broadcast(STATUS_TOPIC, watch)
        yield any_broker, client, watch


def test_a_shutdown_command_stops_a_hanging_handler_after_the_stop_timeout(
    supervised, on_broker, collector
):
    url, client, status = on_broker
    supervisor = supervised("fleet_services:Hang", "--stop-timeout", "2", "--transport", url)
    status.wait_for(lambda r: r["serviceclass"] == "Hang" and r["status"] == Status.IDLE, "idle")
    send_two_step(client, "fleet.hang", [{"n": 1}])
    status.wait_for(lambda r: r["status"] == Status.PROCESSING, "the handler hanging")
    result = CliRunner().invoke(shutdown, ["-s", "Hang", "--transport", url])
    assert result.exit_code == 0, result.output
    assert supervisor.wait(30) == 0, "stopped as for SIGTERM: killed after --stop-timeout"
    back = collector(ack_with=client)
    client.subscribe("fleet.hang", back)
    (returned,) = back.wait_for_count(1, timeout=30)
    assert json.loads(returned.body)["payload"] == {"n": 1}
    assert returned.redelivered, "the message in hand was never acknowledged"


def test_shutdown_by_the_name_the_service_was_started_with(
    supervised, client_url_transport, status_watch, sqlite_broker
):
    supervisor = supervised("demo.FindSpots")
    status_watch.wait_for(
        lambda r: r["serviceclass"] == "FindSpots" and r["status"] == Status.IDLE, "idle"
    )
    result = CliRunner().invoke(shutdown, ["-s", "demo.FindSpots", "--transport", sqlite_broker])
    assert result.exit_code == 0, result.output
    assert supervisor.wait(30) == 0


def test_a_handler_past_its_time_limit_costs_the_worker_and_its_message_comes_again(
    supervised, client_url_transport, status_watch, collector, tmp_path
):
    mark = tmp_path / "attempts"
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:  # no --restart: a replacement is not a crash restart
        supervisor = supervised(
            "fleet_services:TimeLimited", env={"FLEET_MARK": str(mark)}, stderr=stderr
        )
    first = status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid"), "an idle worker"
    )
    out = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.limited.out", out)
    send_two_step(client_url_transport, "fleet.limited", [{"n": 7}])
    (done,) = out.wait_for_count(1, timeout=30)
    assert json.loads(done.body)["payload"] == {"n": 7}
    attempts = mark.read_text().split()
    assert len(attempts) == 2 and attempts[0] == str(first["worker_pid"]) != attempts[1]
    second = status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid") == int(attempts[1]),
        "the replacement worker idle",
    )
    assert second["restarts"] == 1
    assert supervisor.poll() is None
    log = errors.read_text()
    lines = [line for line in log.splitlines() if "time limit" in line]
    assert len(lines) == 1, log
    assert re.search(
        r"TimeLimited\.work .*more than 1 s on message \S+ from queue 'fleet.limited'", lines[0]
    )
    recipe_id = json.loads(done.body)["environment"]["ID"]
    assert f"[{recipe_id}:1]" in lines[0], "the line carries the recipe ID and step"
    assert "restarting in" not in log and "exited with status" not in log


def test_a_worker_past_max_memory_is_replaced_between_messages(
    supervised, client_url_transport, status_watch, collector, tmp_path
):
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:  # no --restart: recycling is not a crash
        supervisor = supervised("fleet_services:Hungry", "--max-memory", "300", stderr=stderr)
    status_watch.wait_for(lambda r: r["status"] == Status.IDLE, "an idle worker")
    out = collector(ack_with=client_url_transport)
    client_url_transport.subscribe("fleet.hungry.out", out)
    # Each message leaves 400 MiB behind: every worker handles one, returns the
    # other two it prefetched, and hands over to a fresh worker.
    send_two_step(client_url_transport, "fleet.hungry", [{"n": n, "mib": 400} for n in range(3)])
    done = out.wait_for_count(3, timeout=60)
    payloads = [json.loads(d.body)["payload"] for d in done]
    assert sorted(p["n"] for p in payloads) == [0, 1, 2], "each handled once, nothing lost"
    assert len({p["pid"] for p in payloads}) == 3, "a fresh worker for each message"
    status_watch.wait_for(
        lambda r: r["status"] == Status.IDLE and r["restarts"] == 3, "the fourth worker idle"
    )
    assert supervisor.poll() is None
    log = errors.read_text()
    assert log.count("more than --max-memory 300 MiB") == 3, log
    assert "restarting in" not in log and "exited with status" not in log


def process_gone(pid: int) -> bool:
    """Ended (a zombie counts: its connections are closed)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_shutdown_broadcast_while_the_worker_restarts_is_obeyed(
    supervised, on_broker, wait_until
):
    url, _, status = on_broker
    supervisor = supervised("fleet_services:Passthrough", "--restart", "--transport", url)
    first = status.wait_for(
        lambda r: r["status"] == Status.IDLE and r.get("worker_pid"), "an idle worker"
    )
    # Hold the supervisor still so that no process of it listens while the command
    # goes out: the worker is dead and its replacement not yet started.
    os.kill(supervisor.pid, signal.SIGSTOP)
    try:
        os.kill(first["worker_pid"], signal.SIGKILL)
        wait_until(lambda: process_gone(first["worker_pid"]), "the worker to die")
        result = CliRunner().invoke(shutdown, ["-s", "Passthrough", "--transport", url])
        assert result.exit_code == 0, result.output
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    assert supervisor.wait(30) == 0, "the next worker obeyed the command sent in the gap"


def test_a_time_limit_is_a_positive_number_of_seconds():
    from zocalo.service import Service, handler

    for wrong in (0, -1):
        with pytest.raises(ValueError, match="time_limit"):
            handler("q", time_limit=wrong)

    class Limited(Service):
        @handler("q", time_limit=2.5)
        def work(self, step, payload):
            pass

    assert [spec.time_limit for spec in Limited().handlers()] == [2.5]


def test_a_report_about_a_message_with_a_huge_recipe_id_stays_one_readable_line():
    """Details come from messages: a 5000-character recipe ID must not cut the line's end
    off (the supervisor would drop it and the next report with it: a time limit or a
    shutdown command lost)."""
    from zocalo.service.supervisor import ChildReports
    from zocalo.service.worker import SupervisorLink

    reports = ChildReports()
    try:
        link = SupervisorLink(reports.write_fd)
        link.report("in_hand", message="m", recipe="x" * 5000, step=[1] * 3000, limit=1.0)
        link.report("shutdown", reason="zocalo.shutdown")
        reports.forked()  # our write end closed, as after a fork: read what was written
        events = reports.read()
    finally:
        reports.close()
    assert [event["event"] for event in events] == ["in_hand", "shutdown"]


def test_a_broker_that_fails_under_a_service_ends_it_with_one_line_and_an_error_exit(
    supervised, sqlite_broker, tmp_path, wait_until
):
    """A transport failure is explained once, where it happens; the worker then stops
    with an error (a restart helps) and adds one line, no traceback."""
    import shutil
    from pathlib import Path

    broker_file = Path(sqlite_broker.removeprefix("sqlite://"))
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        service = supervised("fleet_services:Passthrough", stderr=stderr)
        wait_until(lambda: "started:" in errors.read_text(), "the service to start")
        broker_file.unlink()
        broker_file.mkdir()  # the path now names something no broker can open
        try:
            assert service.wait(30) != 0, "an error exit: the supervisor's --restart would act"
        finally:
            shutil.rmtree(broker_file)
    log = errors.read_text()
    assert "Traceback" not in log, log
    assert len([line for line in log.splitlines() if "stops with an error" in line]) == 1, log
