"""RabbitMQ end to end: Zocalo's transport and services against python-workflows 3.3.

The two-step pipeline of ``bench/embedded.py`` (step 1 -> step 2 -> collector)
on a local RabbitMQ (``amqp://guest:guest@127.0.0.1:5672``), five systems:

- ``zocalo-rabbitmq``: step 1 and step 2 each a real ``zocalo.service`` process
  (``embedded_services:Step1``/``Step2``; supervisor + worker).
- ``workflows-rabbitmq``: each step a ``CommonService`` under the reference
  ``workflows.frontend.Frontend`` with ``PikaTransport`` (``workflows_services.py``),
  acking and forwarding inside a transaction on the subscription's channel, one
  per message: the at-least-once pattern of the reference's own services.
- ``workflows-rabbitmq-notx``: the same, forwarding then acking, no transaction.
- ``aiopika-ceiling``: each step one asyncio process on aio-pika
  (``aiopika_ceiling.py``; consume, publish and ack on the aiormq channel under
  it): decode, move the recipe pointer on, publish with publisher confirms
  without waiting per message, and ack the inputs whose outputs are confirmed
  with one ``multiple`` ack per burst of confirms. The ceiling of aio-pika.
- ``pika-ceiling``: the same forwarder, single-threaded on a raw pika
  ``SelectConnection`` (``pika_ceiling.py``; publishing on a second channel):
  confirms and ``multiple`` acks batched per turn of the I/O loop. No
  framework: what the wire allows from Python (the faster of the two ceilings).

Both steps prefetch ``--prefetch`` (default 100). This process is the producer
and the collector of every system, on *our* transport (the wire is the same:
recipe messages on the default exchange), so the systems differ only in the
two service processes. Queues are declared by this process before the services
start, with our ``declare_queue``: quorum queues dead-lettering to ``dlq.<queue>``,
for every system (the reference transport never declares queues). Every run
gets fresh queues in a private vhost ``zocalo-bench-<pid>``, deleted at the end.

Modes: ``burst`` (5000 at once), ``paced`` (50 msgs/s for 10 s), ``paced-200``
(200 msgs/s for 10 s) and ``stream`` (560 msgs/s for 30 s, the detector
stream; reports ``received_by_end``, ``backlog_end``, ``backlog_max`` and
``backlog_grew`` as ``bench/embedded.py`` does); ``--quick`` runs 1000, 3 s,
3 s and 5 s. Systems are interleaved per mode and repeat; each line is
the median of ``--repeats`` (default 3; 1 with ``--quick``). Latency runs from
the ``time.time()`` in the payload to the collector. ``cpu_s`` is utime+stime of
the service process groups plus this process; ``broker_cpu_s`` that of the
broker's ``beam.smp`` (rabbit@localhost) over the same window (it also serves
anything else using the broker at the time). ``idle_pss_mib`` (burst lines) is
the PSS (``/proc/<pid>/smaps_rollup``) summed over the processes of the step 1
service (zocalo: supervisor + worker; workflows: Frontend + its forked service;
ceilings: the one process), measured after the warm-up, the service idle.

    .venv/bin/python bench/rabbitmq.py [--quick] [--repeats 3] [--prefetch 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import pika  # noqa: E402
from embedded import (  # noqa: E402
    Collector,
    ZocaloSystem,
    backlog_summary,
    choose,
    cpu_seconds,
    group_cpu,
    group_pids,
    median_result,
    run_summary,
    self_cpu,
    spawn,
    stop_all,
)
from embedded_services import DONE_QUEUE, STEP1_QUEUE, STEP2_QUEUE  # noqa: E402

from zocalo.transport.base import dlq_name  # noqa: E402
from zocalo.transport.registry import create_transport  # noqa: E402

SYSTEMS = (
    "zocalo-rabbitmq",
    "workflows-rabbitmq",
    "workflows-rabbitmq-notx",
    "aiopika-ceiling",
    "pika-ceiling",
)
MODES = ("burst", "paced", "paced-200", "stream")
HOST, PORT = "127.0.0.1", 5672
QUEUES = (STEP1_QUEUE, STEP2_QUEUE, DONE_QUEUE)
WARMUP = 20
#: The issue's target, printed next to the results (never asserted).
TARGET = "zocalo-rabbitmq >= 3x workflows-rabbitmq msgs/s in burst"


@dataclass
class Mode:
    name: str
    rate: float  # msgs/s; 0 = burst
    count: int


def modes(quick: bool) -> list[Mode]:
    if quick:
        return [
            Mode("burst", 0, 1000),
            Mode("paced", 50, 50 * 3),
            Mode("paced-200", 200, 200 * 3),
            Mode("stream", 560, 560 * 5),
        ]
    return [
        Mode("burst", 0, 5000),
        Mode("paced", 50, 50 * 10),
        Mode("paced-200", 200, 200 * 10),
        Mode("stream", 560, 560 * 30),
    ]


def pss_mib(pids: list[int]) -> float:
    """Summed ``Pss:`` of ``/proc/<pid>/smaps_rollup`` over ``pids``, in MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
    return round(total_kib / 1024, 1)


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def broker_pid() -> int | None:
    """The OS pid of the rabbit@localhost node's beam.smp."""
    with contextlib.suppress(Exception):
        return int(rabbitmqctl("eval", "list_to_integer(os:getpid()).").strip('"'))
    found = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True)
    for pid in map(int, found.stdout.split()):
        with contextlib.suppress(OSError):
            if b"/var/lib/rabbitmq" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


class Broker:
    """A private vhost on the local broker, and an admin connection to it."""

    def __init__(self) -> None:
        self.vhost = f"zocalo-bench-{os.getpid()}"
        self.url = f"amqp://guest:guest@{HOST}:{PORT}/{self.vhost}"
        self.pid = broker_pid()
        self._connection: pika.BlockingConnection | None = None

    def __enter__(self) -> Broker:
        rabbitmqctl("add_vhost", self.vhost)
        try:
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
            self._connection = pika.BlockingConnection(
                pika.ConnectionParameters(
                    HOST, PORT, self.vhost, pika.PlainCredentials("guest", "guest"), heartbeat=0
                )
            )
            channel = self._connection.channel()
            # The reference Frontend broadcasts its status here; it never declares it.
            channel.exchange_declare("transient.status", "fanout", durable=True)
            channel.close()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):
                self._connection.close()
        rabbitmqctl("delete_vhost", self.vhost)

    def reset_queues(self) -> None:
        """Delete the bench queues (and their DLQs) left by the previous run."""
        assert self._connection is not None
        channel = self._connection.channel()
        for queue in QUEUES:
            channel.queue_delete(queue)
            channel.queue_delete(dlq_name(queue))
        channel.close()

    def consumers(self, queue: str) -> int:
        assert self._connection is not None
        channel = self._connection.channel()
        try:
            return channel.queue_declare(queue, passive=True).method.consumer_count
        finally:
            channel.close()

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.pid else 0.0


class RabbitSystem(ZocaloSystem):
    """Producer + collector here on our transport; the two steps are processes."""

    broker: Broker
    prefetch = 100

    def commands(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def start(self) -> None:
        self.broker.reset_queues()
        self.url = self.broker.url
        declarer = create_transport(self.url)
        declarer.connect()
        try:
            for queue in QUEUES:
                declarer.declare_queue(queue)  # quorum + dlq.<queue>
        finally:
            declarer.close()
        super().start()
        path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": path, "ZOCALO_BENCH_PREFETCH": str(self.prefetch)}
        services = {
            name: spawn(argv, self.workdir / f"{name}.log", env)
            for name, argv in self.commands().items()
        }
        self.children = list(services.values())
        deadline = time.monotonic() + 60
        while not all(self.broker.consumers(q) for q in (STEP1_QUEUE, STEP2_QUEUE)):
            for name, child in services.items():
                if child.poll() is not None:
                    log = (self.workdir / f"{name}.log").read_text()
                    raise RuntimeError(f"{self.name}: service {name} exited early:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: services did not subscribe within 60 s")
            time.sleep(0.1)


class ZocaloRabbit(RabbitSystem):
    name = "zocalo-rabbitmq"

    def commands(self) -> dict[str, list[str]]:
        launcher = str(Path(sys.executable).with_name("zocalo.service"))
        return {
            step: [launcher, "-s", f"embedded_services:{step}", "--transport", self.url]
            for step in ("Step1", "Step2")
        }


class WorkflowsRabbit(RabbitSystem):
    name = "workflows-rabbitmq"
    suffix = ""

    def commands(self) -> dict[str, list[str]]:
        script = str(BENCH_DIR / "workflows_services.py")
        return {
            step: [sys.executable, script, step + self.suffix, self.broker.vhost, HOST, str(PORT)]
            for step in ("Step1", "Step2")
        }


class WorkflowsRabbitNoTx(WorkflowsRabbit):
    name = "workflows-rabbitmq-notx"
    suffix = "NoTx"


class AioPikaCeiling(RabbitSystem):
    name = "aiopika-ceiling"
    script = "aiopika_ceiling.py"

    def commands(self) -> dict[str, list[str]]:
        script = str(BENCH_DIR / self.script)
        return {
            step: [sys.executable, script, queue, self.url]
            for step, queue in (("Step1", STEP1_QUEUE), ("Step2", STEP2_QUEUE))
        }


class PikaCeiling(AioPikaCeiling):
    name = "pika-ceiling"
    script = "pika_ceiling.py"


SYSTEM_CLASSES: dict[str, type[RabbitSystem]] = {
    cls.name: cls
    for cls in (ZocaloRabbit, WorkflowsRabbit, WorkflowsRabbitNoTx, AioPikaCeiling, PikaCeiling)
}


def measure(
    system: ZocaloSystem,
    collector: Collector,
    mode: Mode,
    broker_cpu: Callable[[], float],
    labels: dict[str, Any],
    *,
    warm_up_wait: float,
    done_wait: float,
) -> dict[str, Any]:
    """Start ``system``, warm it up, send ``mode``'s messages on schedule and return one
    result line (``labels`` go after the CPU figures); the system is closed after.

    Every broker benchmark measures the same way, so their lines compare.
    """
    try:
        system.start()
        for number in range(-WARMUP, 0):
            system.send({"n": number, "t": time.time()})
        system.flush()
        if not collector.warmed.wait(warm_up_wait):
            raise RuntimeError(f"{system.name}: warm-up messages did not come through")
        leaders = [child.pid for child in system.children]
        memory: dict[str, Any] = {}
        if mode.name == "burst":  # step 1's processes, idle after the warm-up
            time.sleep(1.0)
            step1 = group_pids(leaders[0])
            memory = {"idle_pss_mib": pss_mib(step1), "idle_pss_processes": len(step1)}
        cpu_before = sum(group_cpu(leaders).values()) + self_cpu()
        broker_before = broker_cpu()
        samples: list[int] = []
        started = time.time()
        wall_started = time.monotonic()
        for number in range(mode.count):
            if mode.rate:
                delay = wall_started + number / mode.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if number % int(mode.rate) == 0:
                    samples.append(number - collector.count())
            system.send({"n": number, "t": time.time()})
        system.flush()
        if mode.rate:  # the end of the schedule, not of the sending loop
            time.sleep(max(0.0, wall_started + mode.count / mode.rate - time.monotonic()))
        received_at_end = collector.count()
        sent_for = time.monotonic() - wall_started
        collector.done.wait(done_wait if not mode.rate else 60)
        cpu_after = sum(group_cpu(leaders).values()) + self_cpu()
        broker_after = broker_cpu()
        window = time.monotonic() - wall_started
    finally:
        system.close()
    result = run_summary(system.name, mode, collector, started, cpu_after - cpu_before)
    result.update(
        {
            "cpu_pct": round(100 * (cpu_after - cpu_before) / window, 1),
            "broker_cpu_s": round(broker_after - broker_before, 2),
            **labels,
            **memory,
        }
    )
    if mode.rate:
        result["sent_for_s"] = round(sent_for, 2)
    if mode.name == "stream":
        result.update(backlog_summary(mode, received_at_end, samples))
    return result


def print_results(
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    repeats: int,
    ours: str,
    ratios: list[tuple[str, str, str, str]],
) -> None:
    """One line per system and mode (the median of the repeats), then each ratio
    ``(mode, field, reference system, label)`` of ours to a reference."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for key, results in runs.items():
        merged[key] = median_result(results) if repeats > 1 else results[0]
        print(json.dumps(merged[key]), flush=True)
    for mode_name, field, reference, label in ratios:
        mine = merged.get((mode_name, ours))
        theirs = merged.get((mode_name, reference))
        if mine and theirs and mine.get(field) is not None and theirs.get(field):
            value = round(mine[field] / theirs[field], 2)
            line = {"bench": "two-step", "ratio": label, "mode": mode_name, "field": field}
            print(json.dumps({**line, "value": value}), flush=True)


def run_once(
    system_name: str, mode: Mode, workdir: Path, broker: Broker, prefetch: int
) -> dict[str, Any]:
    collector = Collector(WARMUP, mode.count)
    system = SYSTEM_CLASSES[system_name](workdir, collector, mode)  # type: ignore[arg-type]
    system.broker, system.prefetch = broker, prefetch
    labels = {"prefetch": prefetch, "queues": "quorum"}
    return measure(system, collector, mode, broker.cpu, labels, warm_up_wait=60, done_wait=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="default 3, or 1 with --quick")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--prefetch", type=int, default=100, help="prefetch of both steps")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    systems, chosen = choose(parser, args, SYSTEMS, modes(args.quick))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="zocalo-rabbitmq-") as tmp, Broker() as broker:
            for repeat in range(repeats):
                for mode in chosen:
                    for name in systems:  # interleaved: A, B, C per mode and repeat
                        workdir = Path(tmp) / f"{repeat}-{mode.name}-{name}"
                        workdir.mkdir()
                        result = run_once(name, mode, workdir, broker, args.prefetch)
                        runs.setdefault((mode.name, name), []).append(result)
                        if repeats > 1:
                            print(json.dumps(result), file=sys.stderr, flush=True)
    finally:
        stop_all()
    print_results(
        runs,
        repeats,
        "zocalo-rabbitmq",
        [
            ("burst", "msgs_per_s", "workflows-rabbitmq", "zocalo/workflows"),
            ("burst", "msgs_per_s", "workflows-rabbitmq-notx", "zocalo/workflows-notx"),
            ("burst", "msgs_per_s", "aiopika-ceiling", "zocalo/aiopika-ceiling"),
            ("burst", "msgs_per_s", "pika-ceiling", "zocalo/pika-ceiling"),
            ("paced", "p50_ms", "workflows-rabbitmq", "zocalo/workflows"),
        ],
    )
    print(f"# target: {TARGET}", file=sys.stderr)


if __name__ == "__main__":
    main()
