"""Pipelining benchmark: the runner against a broker that confirms slowly.

The in-memory broker delays every confirm by 5 ms. With prefetch 10 a runner
that pipelines confirms keeps the handler busy; one that waits for each
confirm before the next message manages ~1/0.005 = 200 msgs/s. Both run in
the same invocation, interleaved, and the median of the repeats is printed
as one JSON line per system.

    .venv/bin/python bench/runner.py [--messages 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Sequence

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import RunnerSettings, Service, ServiceRunner, handler
from zocalo.transport.base import Delivery, Outgoing
from zocalo.transport.registry import create_transport

CONFIRM_DELAY = 0.005
PREFETCH = 10
RECIPE = Recipe(
    {
        "1": {"queue": "bench.work", "output": 2},
        "2": {"queue": "bench.out"},
        "start": [[1, {}]],
    }
)


class PassThrough(Service):
    @handler("bench.work", prefetch=PREFETCH)
    def work(self, step: RecipeStep, payload: dict) -> None:
        step.send(payload)


class WaitingRunner(ServiceRunner):
    """The naive runner: waits a broker round trip for every message."""

    def settle(self, delivery: Delivery, outputs: Sequence[Outgoing]) -> None:
        self.transport.publish(outputs, ack=delivery).result()


def run_once(runner_class: type[ServiceRunner], messages: int) -> dict:
    url = f"memory://bench-{uuid.uuid4().hex}?confirm_delay={CONFIRM_DELAY}"
    received: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    all_in = threading.Event()

    with create_transport(url) as client:

        def collect(delivery: Delivery) -> None:
            number = json.loads(delivery.body)["payload"]["n"]
            received.setdefault(number, time.monotonic())
            client.ack(delivery)
            if len(received) == messages:
                all_in.set()

        client.subscribe("bench.out", collect, prefetch=1000)
        step = RecipeStep()
        for number in range(messages):
            step.start(Recipe({**RECIPE.to_dict(), "start": [[1, {"n": number}]]}))
        confirmations = []
        for number, outgoing in enumerate(step.outputs):
            sent_at[number] = time.monotonic()
            confirmations.append(client.publish([outgoing]))
        for confirmation in confirmations:
            confirmation.result()
        runner = runner_class(PassThrough(), create_transport(url), RunnerSettings())
        started = time.monotonic()
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        all_in.wait(120)
        elapsed = time.monotonic() - started
        runner.request_stop()
        thread.join(30)
    latencies = sorted((received[n] - started) * 1000 for n in received)
    return {
        "msgs_per_s": round(len(received) / elapsed, 1),
        "received": len(received),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    systems = {"zocalo-memory": ServiceRunner, "zocalo-memory-waiting": WaitingRunner}
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, runner_class in systems.items():
            # The naive runner is ~10x slower: give it fewer messages.
            count = args.messages if name == "zocalo-memory" else args.messages // 5
            runs[name].append(run_once(runner_class, count))
    for name, results in runs.items():
        best = sorted(results, key=lambda r: r["msgs_per_s"])[len(results) // 2]
        print(
            json.dumps(
                {
                    "bench": "runner-pipelining",
                    "system": name,
                    "mode": "burst",
                    "rate": 0,
                    "n": best["received"],
                    "received": best["received"],
                    "confirm_delay_ms": CONFIRM_DELAY * 1000,
                    "prefetch": PREFETCH,
                    "msgs_per_s": best["msgs_per_s"],
                    "median_of": len(results),
                }
            )
        )


if __name__ == "__main__":
    main()
