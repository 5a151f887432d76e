"""The fleet as a rich table, once or live, fed from the status topic."""

from __future__ import annotations

import signal
import threading
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from zocalo.monitor.aggregate import Entry, Fleet
from zocalo.service.status import STATUS_TOPIC, Status
from zocalo.transport import Delivery, Transport, create_transport
from zocalo.transport.registry import redact_url

_STATE_STYLE = {
    Status.IDLE: "green",
    Status.PROCESSING: "bold green",
    Status.TIMER: "green",
    Status.NEW: "yellow",
    Status.STARTING: "yellow",
    Status.SHUTDOWN: "yellow",
    Status.END: "yellow",
    Status.ERROR: "bold red",
}


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s ago"


def _row(entry: Entry, now: float, stale: bool) -> tuple[list[Text], str | None]:
    """The cells (plain text: names are never read as markup) and the row style."""
    code = entry.status
    state = Text(entry.state)
    style: str | None = None
    if stale:
        state, style = Text(f"{entry.state} (stale)"), "dim"
    elif code in _STATE_STYLE:
        state.stylize(_STATE_STYLE[Status(code)])
    busy = entry.busy
    cells = [
        Text(entry.service or "-"),
        Text(entry.service_class or "-"),
        Text(entry.host),
        state,
        Text(_count(entry.messages)),
        Text("-" if entry.throughput is None else f"{entry.throughput:.1f}"),
        Text("-" if busy is None else f"{busy:.0%}"),
        Text(_count(entry.failed)),
        Text(_count(entry.dead_lettered)),
        Text(_count(entry.restarts)),
        Text(_ago(entry.seen_ago(now))),
        Text(entry.software),
    ]
    return cells, style


def fleet_table(fleet: Fleet, now: float | None = None, title: str | None = None) -> Table:
    """One row per supervisor heard from; stale ones dimmed and marked."""
    now = fleet.clock() if now is None else now
    entries = fleet.entries(now)
    stale = sum(fleet.is_stale(entry, now) for entry in entries)
    caption = f"{len(entries)} service(s)" + (f", {stale} stale" if stale else "")
    table = Table(title=title, caption=caption)
    for name, justify in [
        ("service", "left"),
        ("class", "left"),
        ("host", "left"),
        ("state", "left"),
        ("messages", "right"),
        ("msg/s", "right"),
        ("busy", "right"),
        ("failed", "right"),
        ("dead-lettered", "right"),
        ("restarts", "right"),
        ("last seen", "right"),
        ("software", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for entry in entries:
        cells, style = _row(entry, now, fleet.is_stale(entry, now))
        table.add_row(*cells, style=style)
    return table


class Monitor:
    """Subscribes to the status topic and feeds a :class:`Fleet`."""

    def __init__(self, url: str, fleet: Fleet | None = None) -> None:
        self.url = url
        self.fleet = fleet or Fleet()
        self.transport: Transport | None = None

    def __enter__(self) -> Monitor:
        self.transport = create_transport(self.url)
        self.transport.connect()
        self.transport.subscribe_broadcast(STATUS_TOPIC, self._on_status)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.transport is not None:
            self.transport.close()

    def _on_status(self, delivery: Delivery) -> None:
        self.fleet.ingest(delivery.body)

    def title(self) -> str:
        return f"zocalo monitor: {redact_url(self.url)}"


def show_once(url: str, seconds: float, console: Console | None = None) -> None:
    """Listen for ``seconds``, then print the table once."""
    with Monitor(url) as monitor:
        threading.Event().wait(seconds)
        (console or Console()).print(fleet_table(monitor.fleet, title=monitor.title()))


def show_live(url: str, refresh: float = 1.0, console: Console | None = None) -> None:
    """Redraw the table every ``refresh`` seconds until SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Monitor(url) as monitor:
            render = lambda: fleet_table(monitor.fleet, title=monitor.title())  # noqa: E731
            with Live(render(), console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    live.update(render(), refresh=True)
                    stop.wait(refresh)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
