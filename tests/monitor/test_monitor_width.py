"""``zocalo monitor`` at the width of the terminal it is drawn on, 80 columns included.

At 80 columns every row must still show its service name, state and counters
in full: columns an operator needs less are left out, nothing is cut short.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.cells import cell_len
from rich.console import Console
from test_monitor_terminal import Terminal, rows_of

from zocalo.monitor.aggregate import STALE_AFTER, FleetStatus
from zocalo.monitor.view import fleet_table
from zocalo.service.status import Status, status_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: (host, service, class, state code, messages, failed, dead-lettered, restarts):
#: a long name (as python-zocalo deployments use) and counters of eight digits.
SERVICES = [
    ("cs05r-sc-serv-42.diamond.ac.uk.12345", "dlstbx.services.per_image_analysis",
     "DLSPerImageAnalysis", Status.PROCESSING, 12345678, 4321, 765, 21),
    ("ws123.example.org.4567", "demo.FindSpots", "FindSpots", Status.IDLE, 98, 5, 3, 1),
    ("ws124.example.org.99", "dispatcher", "Dispatcher", Status.ERROR, 0, 0, 0, 0),
]  # fmt: skip


def fleet_of_services() -> FleetStatus:
    clock = Clock()
    fleet = FleetStatus(clock=clock)
    for host, service, service_class, status, messages, failed, dlq, restarts in SERVICES:
        fleet.ingest(
            status_message(
                host=host,
                status=status,
                service=service,
                service_class=service_class,
                utilization={str(int(Status.PROCESSING)): 0.5},
                extra={
                    "messages": messages,
                    "failed": failed,
                    "dead_lettered": dlq,
                    "restarts": restarts,
                },
            )
        )
    clock.now += 1
    # A fourth one last heard from long ago: its state reads "idle (stale)".
    fleet.ingest(
        status_message(
            host="ws125.example.org.7",
            status=Status.IDLE,
            service="demo.Integrate",
            service_class="Integrate",
            utilization={},
            extra={"messages": 4, "failed": 0, "dead_lettered": 0, "restarts": 0},
        ),
        at=clock.now - STALE_AFTER - 5,
    )
    return fleet


def render(fleet: FleetStatus, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(fleet_table(fleet, title="zocalo monitor", width=width))
    return console.export_text()


def assert_rows_whole(text: str, width: int) -> None:
    lines = text.splitlines()
    too_long = [line for line in lines if cell_len(line.rstrip()) > width]
    assert not too_long, f"lines wider than {width}:\n{text}"
    assert "…" not in text, f"a cell was cut short:\n{text}"
    [header] = [line for line in lines if line.lstrip().startswith("service ")]
    for label in ("state", "messages", "failed", "DLQ", "restarts"):
        assert label in header.split(), f"no {label!r} column at {width}:\n{text}"
    expected = [(s[1], Status(s[3]).name.lower(), s[4:]) for s in SERVICES]
    expected.append(("demo.Integrate", "idle (stale)", (4, 0, 0, 0)))
    for name, state, counters in expected:
        rows = [line for line in lines if line.startswith(f"{name} ")]
        assert len(rows) == 1, f"{name!r} not on one line of its own at {width}:\n{text}"
        row = rows[0]
        assert f" {state} " in row, f"{name}: state {state!r} missing at {width}:\n{text}"
        tokens = iter(row.split())
        # the counters, in column order, each whole (``in`` on an iterator consumes it)
        missing = [count for count in map(str, counters) if count not in tokens]
        assert not missing, f"{name}: counters {missing} missing at {width}:\n{text}"


@pytest.mark.parametrize("width", [80, 100, 132])
def test_names_states_and_counters_are_whole_at_any_width(width: int) -> None:
    assert_rows_whole(render(fleet_of_services(), width), width)


def test_a_wide_terminal_shows_every_column() -> None:
    text = render(fleet_of_services(), 250)
    assert_rows_whole(text, 250)
    for shown in ("cs05r-sc-serv-42.diamond.ac.uk.12345", "DLSPerImageAnalysis", "zocalo "):
        assert shown in text, text


@pytest.mark.slow
def test_once_at_80_columns(supervised, sqlite_broker) -> None:
    """The command itself lays its table out for an 80-column terminal."""
    supervised("monitor_services:Echo")
    # Services report every 6 s: listening 7 s sees at least one report, whenever it started.
    result = subprocess.run(
        [sys.executable, "-m", "zocalo.cli.monitor", "--transport", sqlite_broker, "--once", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="80"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(cell_len(line.rstrip()) <= 80 for line in lines), result.stdout
    assert "…" not in result.stdout, result.stdout
    [row] = [line for line in lines if "Echo" in line]
    tokens = row.split()
    assert tokens[0] == "Echo", result.stdout
    assert tokens[1] in ("starting", "idle"), result.stdout
    assert "1 service(s)" in result.stdout


@pytest.mark.slow
def test_live_view_at_80_columns(supervised, sqlite_broker) -> None:
    """The live view reads its terminal's width: 80 columns, nothing cut short."""
    terminal = Terminal(
        [sys.executable, "-m", "zocalo.cli.monitor", "--transport", sqlite_broker,
         "--refresh", "0.2"],
        columns=80,
    )  # fmt: skip
    try:
        supervised("monitor_services:Echo")
        text = terminal.read_until(
            lambda t: any(line.split()[:2] == ["Echo", "idle"] for line in rows_of(t, "Echo")),
            "an idle Echo row, its name and state whole",
        )
        # (Frames follow each other on the terminal without a newline between them:
        # only a frame's inner lines are whole lines of the text.)
        header = next(line for line in text.splitlines() if line.startswith("service "))
        for line in [header, *rows_of(text, "Echo")]:
            assert cell_len(line.rstrip()) <= 80, text
        assert "…" not in text, text
        for label in ("state", "messages", "failed", "DLQ", "restarts"):
            assert label in header.split(), text
    finally:
        terminal.close()
