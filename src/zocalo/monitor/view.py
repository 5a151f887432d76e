"""The fleet as a rich table, once or live, fed from the status topic."""

from __future__ import annotations

import signal
import threading
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from zocalo.monitor.aggregate import Entry, FleetStatus
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


COLUMNS = (
    "service",
    "class",
    "host",
    "state",
    "messages",
    "msg/s",
    "busy",
    "failed",
    "DLQ",
    "restarts",
    "last seen",
    "software",
)
#: Columns dropped, in this order, until the table fits the terminal. The service
#: name, its state and its counters are never dropped: at 80 columns they are
#: what an operator reads first.
DROPPED_FIRST = ("software", "class", "host", "last seen", "busy", "msg/s")
_RIGHT = {"messages", "msg/s", "busy", "failed", "DLQ", "restarts", "last seen"}


def _cells(entry: Entry, now: float, stale: bool) -> tuple[dict[str, Text], str | None]:
    """The cells by column (plain text: names are never read as markup) and the row style."""
    code = entry.status
    state = Text(entry.state)
    style: str | None = None
    if stale:
        state, style = Text(f"{entry.state} (stale)"), "dim"
    elif code in _STATE_STYLE:
        state.stylize(_STATE_STYLE[Status(code)])
    busy = entry.busy
    cells = {
        "service": Text(entry.service or "-"),
        "class": Text(entry.service_class or "-"),
        "host": Text(entry.host),
        "state": state,
        "messages": Text(_count(entry.messages)),
        "msg/s": Text("-" if entry.throughput is None else f"{entry.throughput:.1f}"),
        "busy": Text("-" if busy is None else f"{busy:.0%}"),
        "failed": Text(_count(entry.failed)),
        "DLQ": Text(_count(entry.dead_lettered)),
        "restarts": Text(_count(entry.restarts)),
        "last seen": Text(_ago(entry.seen_ago(now))),
        "software": Text(entry.software),
    }
    return cells, style


def _table(
    columns: list[str],
    rows: list[tuple[dict[str, Text], str | None]],
    title: str | None,
    caption: str,
    gap: int = 2,
) -> Table:
    # A light frame (a rule under the header, no vertical lines): a boxed grid
    # spends three characters a column, which 80 columns cannot afford. The box's
    # blank divider is one character of the ``gap`` between columns.
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1) if gap > 1 else 0,
        collapse_padding=True,
    )
    for name in columns:
        # Names fold rather than end in an ellipsis, should even the narrowest table not fit.
        table.add_column(
            name,
            justify="right" if name in _RIGHT else "left",
            overflow="fold",
            no_wrap=name != "service",
        )
    for cells, style in rows:
        table.add_row(*(cells[name] for name in columns), style=style)
    return table


def fleet_table(
    status: FleetStatus,
    now: float | None = None,
    title: str | None = None,
    width: int | None = None,
) -> Table:
    """One row per supervisor heard from; stale ones dimmed and marked.

    Given a ``width`` (the terminal's), the least needed columns are left out until
    the table fits (:data:`DROPPED_FIRST`), then the columns move closer together,
    so no cell is cut short.
    """
    now = status.clock() if now is None else now
    entries = status.entries(now)
    stale = sum(status.is_stale(entry, now) for entry in entries)
    caption = f"{len(entries)} service(s)" + (f", {stale} stale" if stale else "")
    rows = [_cells(entry, now, status.is_stale(entry, now)) for entry in entries]
    columns = list(COLUMNS)
    table = _table(columns, rows, title, caption)
    if width is None:
        return table
    measure = Console(width=max(width, 1000))
    for name in DROPPED_FIRST:
        if measure.measure(table).maximum <= width:
            return table
        columns.remove(name)
        table = _table(columns, rows, title, caption)
    if measure.measure(table).maximum > width:  # long names: one space between columns
        table = _table(columns, rows, title, caption, gap=1)
    return table


class Monitor:
    """Subscribes to the status topic and feeds a :class:`FleetStatus`."""

    def __init__(self, url: str, status: FleetStatus | None = None) -> None:
        self.url = url
        self.status = status or FleetStatus()
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
        self.status.ingest(delivery.body)

    def title(self) -> str:
        return f"zocalo monitor: {redact_url(self.url)}"


def show_once(url: str, seconds: float, console: Console | None = None) -> None:
    """Listen for ``seconds``, then print the table once."""
    console = console or Console()
    with Monitor(url) as monitor:
        threading.Event().wait(seconds)
        console.print(fleet_table(monitor.status, title=monitor.title(), width=console.width))


def show_live(url: str, refresh: float = 1.0, console: Console | None = None) -> None:
    """Redraw the table every ``refresh`` seconds until SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    console = console or Console()
    try:
        with Monitor(url) as monitor:
            # The terminal's width is read at every redraw: a resized window re-lays the table.
            render = lambda: fleet_table(  # noqa: E731
                monitor.status, title=monitor.title(), width=console.width
            )
            with Live(render(), console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    live.update(render(), refresh=True)
                    stop.wait(refresh)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
