"""The fleet's bookkeeping and its table, without a broker or a terminal."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from zocalo.monitor.aggregate import FleetStatus
from zocalo.monitor.view import fleet_table
from zocalo.service.status import Status, status_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ours(host: str = "uk.ac.example.ws1.101", messages: int = 0, **extra) -> dict:
    return status_message(
        host=host,
        status=extra.pop("status", Status.IDLE),
        service="Echo",
        service_class="Echo",
        utilization={"2": 0.75, "4": 0.25},
        extra={"uptime": 12.0, "restarts": 0, "messages": messages, "failed": 0, **extra},
    )


@pytest.fixture
def workflows_status() -> dict:
    """A status dict exactly as python-workflows' frontend builds it (no broker needed)."""
    frontend_module = pytest.importorskip("workflows.frontend")
    from workflows.services.common_service import CommonService
    from workflows.transport.offline_transport import OfflineTransport

    frontend = frontend_module.Frontend(transport=OfflineTransport)
    frontend._service_name = "Reference service"
    frontend._service_class_name = "ReferenceService"
    frontend._service_status_announced = CommonService.SERVICE_STATUS_IDLE
    return json.loads(json.dumps(frontend.get_status()))  # as it travels


def render(fleet: FleetStatus) -> str:
    console = Console(width=250, record=True, color_system=None)
    console.print(fleet_table(fleet))
    return console.export_text()


def test_a_python_workflows_status_is_shown_without_our_fields(workflows_status):
    assert "messages" not in workflows_status and "restarts" not in workflows_status
    fleet = FleetStatus()
    entry = fleet.ingest(json.dumps(workflows_status))
    assert entry is not None and entry.host == workflows_status["host"]
    assert (entry.state, entry.service_class) == ("idle", "ReferenceService")
    assert entry.messages is None and entry.restarts is None and entry.throughput is None
    assert entry.software.startswith("workflows ")
    text = render(fleet)
    assert "ReferenceService" in text and "idle" in text and "workflows 3" in text


def test_ours_and_theirs_side_by_side(workflows_status):
    fleet = FleetStatus()
    fleet.ingest(workflows_status)
    fleet.ingest(ours(messages=5, restarts=2))
    assert [e.service_class for e in fleet.entries()] == ["Echo", "ReferenceService"]
    echo = fleet.entries()[0]
    assert (echo.messages, echo.restarts, echo.busy) == (5, 2, 0.25)
    assert echo.software.startswith("zocalo ")
    assert "2 service(s)" in render(fleet)


def test_throughput_from_successive_counts():
    clock = Clock()
    fleet = FleetStatus(clock=clock)
    entry = fleet.ingest(ours(messages=100))
    assert entry.throughput is None, "one sample gives no rate"
    clock.now += 0.2
    fleet.ingest(ours(messages=101))
    assert entry.throughput is None, "samples too close together give no rate"
    clock.now += 5.8
    fleet.ingest(ours(messages=160))
    assert entry.throughput == pytest.approx(10.0)
    clock.now += 6
    fleet.ingest(ours(messages=160))
    assert entry.throughput == pytest.approx(5.0), "averaged over the window"
    for _ in range(10):  # the window slides: old samples stop counting
        clock.now += 6
        fleet.ingest(ours(messages=160))
    assert entry.throughput == 0.0
    assert "0.0" in render(fleet)


def test_a_restarted_worker_resets_the_rate_not_negative():
    clock = Clock()
    fleet = FleetStatus(clock=clock)
    entry = fleet.ingest(ours(messages=500))
    clock.now += 6
    fleet.ingest(ours(messages=560))
    assert entry.throughput == pytest.approx(10.0)
    clock.now += 6
    fleet.ingest(ours(messages=3, restarts=1))
    assert entry.throughput is None
    clock.now += 6
    fleet.ingest(ours(messages=15, restarts=1))
    assert entry.throughput == pytest.approx(2.0)


def test_stale_after_15_s_and_dropped_after_60_s():
    clock = Clock()
    fleet = FleetStatus(clock=clock)
    fleet.ingest(ours(host="a.1"))
    fleet.ingest(ours(host="b.2"))
    clock.now += 14
    fleet.ingest(ours(host="b.2"))
    assert not any(fleet.is_stale(e) for e in fleet.entries())
    clock.now += 2
    assert [fleet.is_stale(e) for e in fleet.entries()] == [True, False]
    text = render(fleet)
    assert "idle (stale)" in text and "16s ago" in text and "1 stale" in text
    clock.now += 45
    assert [e.host for e in fleet.entries()] == ["b.2"]
    clock.now += 60
    assert fleet.entries() == []


def test_teardown_removes_at_once(workflows_status):
    fleet = FleetStatus()
    fleet.ingest(ours(host="a.1"))
    fleet.ingest(workflows_status)
    assert fleet.ingest(ours(host="a.1", status=Status.TEARDOWN)) is None
    fleet.ingest({**workflows_status, "status": -2, "statustext": "shutdown"})
    assert len(fleet) == 0


def test_rubbish_is_ignored():
    fleet = FleetStatus()
    for body in [b"not json", b"[1, 2]", json.dumps({"status": 2}), {"host": 7}]:
        assert fleet.ingest(body) is None
    assert fleet.ignored == 4 and len(fleet) == 0
    entry = fleet.ingest({"host": "x.1", "status": "weird", "messages": "many"})
    assert (entry.state, entry.messages, entry.software) == ("weird", None, "?")
    entry = fleet.ingest({"host": "y.1", "status": 7})
    assert entry.state == "error"
    render(fleet)  # odd entries still render


def test_names_are_not_read_as_markup():
    fleet = FleetStatus()
    fleet.ingest({**ours(), "service": "[bold]Echo[/bold]"})
    assert "[bold]Echo[/bold]" in render(fleet)
