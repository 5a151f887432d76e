"""Services the supervisor tests run in real worker processes (``fleet_services:Name``)."""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import Any

from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, handler


class Slow(Service):
    """Passes messages on after holding each for ``payload["hold"]`` seconds."""

    @handler("fleet.slow", prefetch=5)
    def hold(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        threading.Event().wait(float(payload.get("hold", 0)))
        step.send(payload)


class Passthrough(Service):
    """Passes every message straight on."""

    @handler("fleet.work", prefetch=10)
    def work(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


class CrashOnStart(Service):
    """Fails while starting, every time: a crash loop."""

    def initializing(self) -> None:
        raise RuntimeError("cannot reach the detector database")

    @handler("fleet.never")
    def never(self, step: RecipeStep, payload: Any) -> None:
        raise AssertionError("never started")


class BrokenConstructor(Service):
    """Raises while it is being built, before any broker connection."""

    def __init__(self) -> None:
        raise ValueError("calibration file is missing")

    @handler("fleet.never")
    def never(self, step: RecipeStep, payload: Any) -> None:
        raise AssertionError("never started")


class LeavesAMark(Passthrough):
    """Registers an atexit handler, as library code does, that writes ``$FLEET_MARK``."""

    def initializing(self) -> None:
        mark = os.environ["FLEET_MARK"]
        atexit.register(lambda: Path(mark).write_text(f"cleaned up by {os.getpid()}"))
