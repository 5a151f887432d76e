"""The fleet as the status topic shows it: pure bookkeeping, no broker, no terminal.

Every supervisor (ours, and python-workflows' frontend) broadcasts a status
dict on ``transient.status`` at least every 6 s. :class:`FleetStatus` keeps the
latest one per ``host``, works out throughput from successive ``messages``
counts (only ours carry them; python-workflows' entries simply show none),
marks an entry stale when nothing was heard from it for ``stale_after``
seconds and forgets it after ``drop_after`` seconds or when it announces
TEARDOWN. (Not to be confused with :mod:`zocalo.launch`, which starts services
in processes or threads for the demo and the tests.)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zocalo.service.status import STATUS_EXPIRATION, Status

STALE_AFTER = STATUS_EXPIRATION
DROP_AFTER = 60.0
#: Throughput is measured over the samples of the last this many seconds.
RATE_WINDOW = 30.0
#: Two samples closer together than this give no usable rate.
MIN_RATE_SPAN = 1.0


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def status_text(code: Any, given: Any = None) -> str:
    """The text for a status code: the sender's own, else ours, else the code."""
    if isinstance(given, str) and given:
        return given
    try:
        return Status(int(code)).text
    except (TypeError, ValueError):
        return str(code)


@dataclass
class Entry:
    """What is known about one supervisor (one ``host`` id)."""

    host: str
    first_seen: float
    last_seen: float
    report: dict[str, Any] = field(default_factory=dict)
    #: (when, messages) pairs within the rate window, oldest first.
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    throughput: float | None = None

    @property
    def status(self) -> int | None:
        return _int_or_none(self.report.get("status"))

    @property
    def state(self) -> str:
        return status_text(self.report.get("status"), self.report.get("statustext"))

    @property
    def service(self) -> str | None:
        return self.report.get("service")

    @property
    def service_class(self) -> str | None:
        return self.report.get("serviceclass")

    @property
    def messages(self) -> int | None:
        return _int_or_none(self.report.get("messages"))

    @property
    def restarts(self) -> int | None:
        return _int_or_none(self.report.get("restarts"))

    @property
    def failed(self) -> int | None:
        return _int_or_none(self.report.get("failed"))

    @property
    def dead_lettered(self) -> int | None:
        return _int_or_none(self.report.get("dead_lettered"))

    @property
    def busy(self) -> float | None:
        """Fraction of the last few seconds spent processing, from ``utilization``."""
        usage = self.report.get("utilization")
        if not isinstance(usage, dict) or not usage:
            return None
        try:
            return float(usage.get(str(int(Status.PROCESSING)), 0.0))
        except (TypeError, ValueError):
            return None

    @property
    def software(self) -> str:
        """``zocalo 0.1.0`` for ours, ``workflows 3.3`` for python-workflows' frontend."""
        if self.report.get("zocalo"):
            return f"zocalo {self.report['zocalo']}"
        version = self.report.get("workflows")
        if not version:
            return "?"
        version = str(version)
        return version if " " in version else f"workflows {version}"

    def seen_ago(self, now: float) -> float:
        return max(0.0, now - self.last_seen)

    def is_stale(self, now: float, stale_after: float = STALE_AFTER) -> bool:
        return self.seen_ago(now) > stale_after

    def _update(self, report: dict[str, Any], at: float) -> None:
        self.report = report
        self.last_seen = at
        count = self.messages
        if count is None:
            self.samples.clear()
            self.throughput = None
            return
        if self.samples and count < self.samples[-1][1]:
            self.samples.clear()  # a new worker process: its counters start again
            self.throughput = None
        self.samples.append((at, count))
        while len(self.samples) > 2 and at - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        (first_at, first), (last_at, last) = self.samples[0], self.samples[-1]
        if last_at - first_at >= MIN_RATE_SPAN:
            self.throughput = (last - first) / (last_at - first_at)


class FleetStatus:
    """The latest status of every supervisor heard from, keyed by host id. Thread safe."""

    def __init__(
        self,
        *,
        stale_after: float = STALE_AFTER,
        drop_after: float = DROP_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = stale_after
        self.drop_after = drop_after
        self.clock = clock
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self.ignored = 0

    def ingest(self, report: Any, at: float | None = None) -> Entry | None:
        """Take one status dict (or its JSON); the entry it updated, or None."""
        if isinstance(report, bytes | str):
            try:
                report = json.loads(report)
            except ValueError:
                report = None
        if not isinstance(report, dict) or not isinstance(report.get("host"), str):
            self.ignored += 1
            return None
        at = self.clock() if at is None else at
        host = report["host"]
        with self._lock:
            if _int_or_none(report.get("status")) == Status.TEARDOWN:
                self._entries.pop(host, None)
                return None
            entry = self._entries.get(host)
            if entry is None:
                entry = self._entries[host] = Entry(host=host, first_seen=at, last_seen=at)
            entry._update(report, at)
            return entry

    def prune(self, now: float | None = None) -> None:
        """Forget entries not heard from for ``drop_after`` seconds."""
        now = self.clock() if now is None else now
        with self._lock:
            for host in [h for h, e in self._entries.items() if e.seen_ago(now) > self.drop_after]:
                del self._entries[host]

    def entries(self, now: float | None = None) -> list[Entry]:
        """Current entries (after pruning), by service name, then host."""
        now = self.clock() if now is None else now
        self.prune(now)
        with self._lock:
            entries = list(self._entries.values())
        return sorted(entries, key=lambda e: (e.service or e.service_class or "", e.host))

    def is_stale(self, entry: Entry, now: float | None = None) -> bool:
        return entry.is_stale(self.clock() if now is None else now, self.stale_after)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
