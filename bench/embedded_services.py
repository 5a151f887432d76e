"""Zocalo side of ``bench/embedded.py``: the two pass-through steps and an idle service.

Each runs in its own process (``zocalo.service -s embedded_services:Step1``)
or on a thread of the bench process (the ``zocalo-memory`` system).
``$ZOCALO_BENCH_PREFETCH`` sets the steps' prefetch (default 100).
"""

from __future__ import annotations

import os
from typing import Any

from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, handler

PREFETCH = int(os.environ.get("ZOCALO_BENCH_PREFETCH", "100"))
STEP1_QUEUE = "bench.step1"
STEP2_QUEUE = "bench.step2"
DONE_QUEUE = "bench.done"
IDLE_QUEUE = "bench.idle"
RECIPE = {
    "1": {"service": "Step1", "queue": STEP1_QUEUE, "output": 2},
    "2": {"service": "Step2", "queue": STEP2_QUEUE, "output": 3},
    "3": {"service": "collector", "queue": DONE_QUEUE},
}


class Step1(Service):
    @handler(STEP1_QUEUE, prefetch=PREFETCH)
    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


class Step2(Service):
    @handler(STEP2_QUEUE, prefetch=PREFETCH)
    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


class Idle(Service):
    """Subscribed to a queue nobody sends to: what does waiting cost?"""

    @handler(IDLE_QUEUE)
    def never(self, step: RecipeStep, payload: Any) -> None:
        raise AssertionError("the idle queue got a message")
