"""Embedded brokers end to end: Zocalo's SQLite broker against SqliteHuey.

A two-step pipeline (step 1 -> step 2 -> collector) on four systems:

- ``zocalo-sqlite``: step 1 and step 2 each a real ``zocalo.service`` process on
  ``sqlite:///<tmp>/broker.db``; this process produces and collects on its own
  connection.
- ``zocalo-memory``: everything in this process on ``memory://``, the services on
  threads via ``ServiceRunner`` (the ceiling of the runner).
- ``huey-sqlite-default``: SqliteHuey, step1 -> step2 -> collect as chained tasks,
  ``huey_consumer -w 2 -k process`` with its default polling.
- ``huey-sqlite-tuned``: the same with ``-d 0.001 -m 0.01``.

Modes: ``burst`` (all messages at once), ``paced`` (50 msgs/s) and ``stream``
(560 msgs/s, the detector stream). Latency runs from the ``time.time()`` stamp
carried in the payload to the moment the collector sees the message. CPU is
utime+stime from /proc of every process of the system (this one included).
One JSON line per system and mode (median of ``--repeats``).

    .venv/bin/python bench/embedded.py [--quick] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import embedded_services  # noqa: E402
from embedded_services import DONE_QUEUE, IDLE_QUEUE, RECIPE, STEP1_QUEUE, STEP2_QUEUE  # noqa: E402

from zocalo.recipe import Recipe  # noqa: E402
from zocalo.recipe.step import RecipeStep  # noqa: E402
from zocalo.service import ServiceRunner  # noqa: E402
from zocalo.transport.base import Delivery, Transport  # noqa: E402
from zocalo.transport.registry import create_transport  # noqa: E402

SYSTEMS = ("zocalo-sqlite", "zocalo-memory", "huey-sqlite-default", "huey-sqlite-tuned")
MODES = ("burst", "paced", "stream")
HUEY_TUNING = {"huey-sqlite-default": [], "huey-sqlite-tuned": ["-d", "0.001", "-m", "0.01"]}
WARMUP = 20
TICKS = os.sysconf("SC_CLK_TCK")
#: Issue targets, printed next to the results (never asserted).
TARGETS = {
    "burst": "zocalo-sqlite >= 2000 msgs/s and >= 5x huey-sqlite-tuned",
    "paced": "zocalo-sqlite p50 <= huey-sqlite-tuned (~5 ms), p99 < 30 ms",
    "stream": "zocalo-sqlite no backlog, p99 < 50 ms; idle service < 1% of a core",
}


@dataclass
class Mode:
    name: str
    rate: float  # msgs/s; 0 = burst
    count: int


def modes(quick: bool) -> list[Mode]:
    if quick:
        return [Mode("burst", 0, 500), Mode("paced", 50, 100), Mode("stream", 560, 560 * 5)]
    return [Mode("burst", 0, 5000), Mode("paced", 50, 500), Mode("stream", 560, 560 * 30)]


# -- processes ----------------------------------------------------------------
_children: list[subprocess.Popen] = []


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` as the leader of its own process group, logging to ``log_path``."""
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=BENCH_DIR,
            start_new_session=True,
        )
    _children.append(child)
    return child


def stop(child: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the child's whole process group; SIGKILL it if it lingers."""
    if child not in _children:
        return
    _children.remove(child)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)
        try:
            child.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group
        os.killpg(child.pid, signal.SIGKILL)


def stop_all() -> None:
    for child in list(_children):
        stop(child, timeout=5.0)


def group_pids(leader: int) -> list[int]:
    """Every live process of the process group led by ``leader``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat_fields(int(entry))
            if stat is not None and int(stat[2]) == leader:
                pids.append(int(entry))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def group_cpu(leaders: list[int]) -> dict[int, float]:
    """CPU seconds per pid of every group led by ``leaders``."""
    return {pid: cpu_seconds(pid) for leader in leaders for pid in group_pids(leader)}


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


# -- collecting ---------------------------------------------------------------
class Collector:
    """Send and seen stamps per message number (negative numbers are warm-up).

    Counting is O(1) per message and waiters are woken only when their phase is
    complete, so collecting does not grow more costly as messages pile up.
    """

    def __init__(self, warmup: int, count: int) -> None:
        self.seen: dict[int, tuple[float, float]] = {}
        self.lock = threading.Lock()
        self.warm = 0
        self.main = 0
        self.warmup, self.expected = warmup, count
        self.warmed = threading.Event()
        self.done = threading.Event()

    def record(self, number: int, sent: float, seen: float) -> None:
        with self.lock:
            if number in self.seen:
                return
            self.seen[number] = (sent, seen)
            if number < 0:
                self.warm += 1
                if self.warm >= self.warmup:
                    self.warmed.set()
            else:
                self.main += 1
                if self.main >= self.expected:
                    self.done.set()

    def count(self) -> int:
        return self.main


# -- systems ------------------------------------------------------------------
class System:
    """One system under test: start, send(payload), stop; the collector gets results."""

    name = ""

    def __init__(self, workdir: Path, collector: Collector, mode: Mode) -> None:
        self.workdir = workdir
        self.collector = collector
        self.mode = mode
        self.children: list[subprocess.Popen] = []

    def start(self) -> None: ...

    def send(self, payload: dict[str, Any]) -> None: ...

    def flush(self) -> None:
        """Make sure everything sent so far is with the broker."""

    def close(self) -> None:
        for child in self.children:
            stop(child)

    def extra(self) -> dict[str, Any]:
        return {}


class ZocaloSystem(System):
    url = ""

    def start(self) -> None:
        self.client: Transport = create_transport(self.url)
        self.client.connect()
        self.client.subscribe(DONE_QUEUE, self._collect, prefetch=1000)
        self._confirmations: list[Any] = []

    def _collect(self, delivery: Delivery) -> None:
        seen = time.time()
        payload = json.loads(delivery.body)["payload"]
        self.client.ack(delivery)
        self.collector.record(payload["n"], payload["t"], seen)

    def send(self, payload: dict[str, Any]) -> None:
        step = RecipeStep()
        step.start(Recipe({**RECIPE, "start": [[1, payload]]}))
        self._confirmations.append(self.client.publish(step.outputs))

    def flush(self) -> None:
        for confirmation in self._confirmations:
            confirmation.result(60)
        self._confirmations.clear()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if hasattr(self, "client"):
                self.client.close()


class ZocaloSqlite(ZocaloSystem):
    name = "zocalo-sqlite"

    def start(self) -> None:
        self.db = self.workdir / "broker.db"
        self.url = f"sqlite://{self.db}"
        super().start()  # creates the broker file
        services = ["Step1", "Step2"] + (["Idle"] if self.mode.name == "stream" else [])
        launcher = [str(Path(sys.executable).with_name("zocalo.service"))]
        path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
        self.services = {
            name: spawn(
                [*launcher, "-s", f"embedded_services:{name}", "--transport", self.url],
                self.workdir / f"{name}.log",
                {"PYTHONPATH": path},
            )
            for name in services
        }
        self.idle = self.services.pop("Idle", None)
        self.children = [*self.services.values(), *([self.idle] if self.idle else [])]
        wanted = {STEP1_QUEUE, STEP2_QUEUE} | ({IDLE_QUEUE} if self.idle else set())
        deadline = time.monotonic() + 30
        while not wanted <= self._subscribed():
            for name, child in {**self.services, "Idle": self.idle}.items():
                if child is not None and child.poll() is not None:
                    log = (self.workdir / f"{name}.log").read_text()
                    raise RuntimeError(f"service {name} exited early:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"services did not subscribe to {wanted} within 30 s")
            time.sleep(0.05)

    def _subscribed(self) -> set[str]:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return {queue for (queue,) in db.execute("SELECT queue FROM consumers")}
        finally:
            db.close()

    def extra(self) -> dict[str, Any]:
        wal = self.db.with_name(self.db.name + "-wal")
        return {
            "db_bytes": self.db.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }


class ZocaloMemory(ZocaloSystem):
    name = "zocalo-memory"

    def start(self) -> None:
        self.url = f"memory://bench-{uuid.uuid4().hex}"
        super().start()
        self.runners = [
            ServiceRunner(service(), create_transport(self.url))
            for service in (embedded_services.Step1, embedded_services.Step2)
        ]
        self.threads = [threading.Thread(target=r.run, daemon=True) for r in self.runners]
        for thread in self.threads:
            thread.start()
        for runner in self.runners:
            if not runner.started.wait(10):
                raise RuntimeError("a memory service did not start")

    def close(self) -> None:
        try:
            for runner in getattr(self, "runners", []):
                runner.request_stop()
            for thread in getattr(self, "threads", []):
                thread.join(30)
        finally:
            super().close()


class HueySqlite(System):
    def start(self) -> None:
        import huey_tasks

        self.db = self.workdir / "huey.db"
        address = f"zocalo-bench/{uuid.uuid4().hex}"
        self.receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.receiver.bind("\0" + address)
        self.receiver.settimeout(0.2)
        self._listening = True
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        self.huey, self.step1 = huey_tasks.build(str(self.db))
        path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
        consumer = Path(sys.executable).with_name("huey_consumer")
        self.children = [
            spawn(
                [str(consumer), "huey_tasks.huey", "-w", "2", "-k", "process"]
                + HUEY_TUNING[self.name],
                self.workdir / "huey.log",
                {"PYTHONPATH": path, "HUEY_BENCH_DB": str(self.db), "HUEY_BENCH_SOCKET": address},
            )
        ]

    def _listen(self) -> None:
        while self._listening:
            try:
                data = self.receiver.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            report = json.loads(data)
            self.collector.record(report["n"], report["t"], report["seen"])

    def send(self, payload: dict[str, Any]) -> None:
        self.step1(payload)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._listening = False
            if hasattr(self, "_listener"):
                self._listener.join(5)
                self.receiver.close()
            if hasattr(self, "huey"):
                self.huey.storage.close()

    def extra(self) -> dict[str, Any]:
        wal = self.db.with_name(self.db.name + "-wal")
        return {
            "db_bytes": self.db.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }


class HueyDefault(HueySqlite):
    name = "huey-sqlite-default"


class HueyTuned(HueySqlite):
    name = "huey-sqlite-tuned"


SYSTEM_CLASSES: dict[str, type[System]] = {
    cls.name: cls for cls in (ZocaloSqlite, ZocaloMemory, HueyDefault, HueyTuned)
}


# -- one run ------------------------------------------------------------------
def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextlib.contextmanager
def running(system: System) -> Iterator[System]:
    try:
        system.start()
        yield system
    finally:
        system.close()


def run_once(system_name: str, mode: Mode, workdir: Path) -> dict[str, Any]:
    collector = Collector(WARMUP, mode.count)
    system = SYSTEM_CLASSES[system_name](workdir, collector, mode)
    with running(system):
        # Warm up: a few messages through the whole pipeline, not counted.
        for number in range(-WARMUP, 0):
            system.send({"n": number, "t": time.time()})
        system.flush()
        if not collector.warmed.wait(60):
            raise RuntimeError(f"{system_name}: warm-up messages did not come through")
        leaders = [
            child.pid for child in system.children if child is not getattr(system, "idle", None)
        ]
        idle = getattr(system, "idle", None)
        cpu_before = sum(group_cpu(leaders).values()) + self_cpu()
        idle_before = cpu_seconds(idle.pid) if idle else 0.0
        samples: list[int] = []
        started = time.time()
        wall_started = time.monotonic()
        for number in range(mode.count):
            if mode.rate:
                due = wall_started + number / mode.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if number % int(mode.rate) == 0:
                    samples.append(number - collector.count())
            system.send({"n": number, "t": time.time()})
        system.flush()
        if mode.rate:  # the end of the schedule, not of the sending loop
            end = wall_started + mode.count / mode.rate
            time.sleep(max(0.0, end - time.monotonic()))
        received_at_end = collector.count()
        sent_for = time.monotonic() - wall_started
        drain = 120 if not mode.rate else 60
        collector.done.wait(drain)
        cpu_after = sum(group_cpu(leaders).values()) + self_cpu()
        idle_after = cpu_seconds(idle.pid) if idle else 0.0
        window = time.monotonic() - wall_started
        extra = system.extra() if mode.name == "stream" else {}
    result = run_summary(system_name, mode, collector, started, cpu_after - cpu_before)
    result["cpu_pct"] = round(100 * (cpu_after - cpu_before) / window, 1)
    if mode.rate:
        result["sent_for_s"] = round(sent_for, 2)
    if mode.name == "stream":
        result.update(backlog_summary(mode, received_at_end, samples))
        if idle is not None:
            result["idle_service_cpu_pct"] = round(100 * (idle_after - idle_before) / window, 2)
        result.update(extra)
    return result


def choose(
    parser: argparse.ArgumentParser, args: argparse.Namespace, known: Any, all_modes: list
) -> tuple[list[str], list]:
    """The systems and modes asked for with --systems/--modes; SIGTERM stops like Ctrl-C."""
    systems = [name for name in args.systems.split(",") if name]
    unknown = set(systems) - set(known)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: {', '.join(known)}")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    return systems, [mode for mode in all_modes if mode.name in args.modes.split(",")]


def backlog_summary(mode: Any, received_at_end: int, samples: list[int]) -> dict[str, Any]:
    """How far behind a paced stream was when the sender's schedule ended."""
    backlog_end = mode.count - received_at_end
    return {
        "received_by_end": received_at_end,
        "backlog_end": backlog_end,
        "backlog_max": max([*samples, backlog_end]),
        # More than 50 ms worth of messages still outstanding at the end.
        "backlog_grew": backlog_end > max(10, mode.rate * 0.05),
    }


def run_summary(
    system_name: str, mode: Any, collector: Any, started: float, cpu_s: float
) -> dict[str, Any]:
    """The JSON line every two-step benchmark prints for one run (see ARCHITECTURE.md)."""
    stamps = {n: stamp for n, stamp in collector.seen.items() if n >= 0}
    latencies = sorted((seen - sent) * 1000 for sent, seen in stamps.values())
    last = max((seen for _, seen in stamps.values()), default=started)
    return {
        "bench": "two-step",
        "system": system_name,
        "mode": mode.name,
        "rate": mode.rate,
        "n": mode.count,
        "received": len(stamps),
        "msgs_per_s": round(len(stamps) / max(last - started, 1e-9), 1),
        "p50_ms": _round(percentile(latencies, 0.50)),
        "p99_ms": _round(percentile(latencies, 0.99)),
        "max_ms": _round(latencies[-1] if latencies else None),
        "cpu_s": round(cpu_s, 2),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median of numeric fields; other fields from the first run."""
    merged = dict(results[0])
    for key, value in merged.items():
        values = [r[key] for r in results if r.get(key) is not None]
        if isinstance(value, bool) or not isinstance(value, int | float) or not values:
            continue
        middle = statistics.median(values)
        merged[key] = round(middle, 2) if isinstance(middle, float) else middle
    merged["median_of"] = len(results)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 60 s)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    args = parser.parse_args()
    systems, chosen = choose(parser, args, SYSTEMS, modes(args.quick))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    emit: Callable[[dict[str, Any]], None] = lambda line: print(json.dumps(line), flush=True)  # noqa: E731
    try:
        with tempfile.TemporaryDirectory(prefix="zocalo-embedded-") as tmp:
            for repeat in range(args.repeats):
                for mode in chosen:
                    for name in systems:  # interleaved: A, B, C, D per mode and repeat
                        workdir = Path(tmp) / f"{repeat}-{mode.name}-{name}"
                        workdir.mkdir()
                        result = run_once(name, mode, workdir)
                        runs.setdefault((mode.name, name), []).append(result)
                        if args.repeats == 1:
                            emit(result)
                        else:
                            print(json.dumps(result), file=sys.stderr, flush=True)
            if args.repeats > 1:
                for results in runs.values():
                    emit(median_result(results))
    finally:
        stop_all()
    for mode in chosen:
        print(f"# target {mode.name}: {TARGETS[mode.name]}", file=sys.stderr)


if __name__ == "__main__":
    main()
