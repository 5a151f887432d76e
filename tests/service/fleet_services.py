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


class Hang(Service):
    """Its handler never returns: only a kill ends it."""

    @handler("fleet.hang", prefetch=3)
    def hang(self, step: RecipeStep, payload: Any) -> None:
        threading.Event().wait()


class TimeLimited(Service):
    """Has one second per message; hangs on a message's first attempt only.

    Each attempt appends this worker's pid to the file ``$FLEET_MARK``.
    """

    @handler("fleet.limited", time_limit=1)
    def work(self, step: RecipeStep, payload: Any) -> None:
        mark = Path(os.environ["FLEET_MARK"])
        first = not mark.exists()
        with mark.open("a") as attempts:
            attempts.write(f"{os.getpid()}\n")
        if first:
            threading.Event().wait()
        step.send(payload)


class Hungry(Service):
    """Keeps ``payload["mib"]`` MiB for good after every message: a leak."""

    kept: list[bytes] = []

    @handler("fleet.hungry", prefetch=3)
    def eat(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        self.kept.append(b"\x01" * (int(payload["mib"]) * 1024 * 1024))
        step.send({**payload, "pid": os.getpid()})


class LeavesAMark(Passthrough):
    """Registers an atexit handler, as library code does, that writes ``$FLEET_MARK``."""

    def initializing(self) -> None:
        mark = os.environ["FLEET_MARK"]
        atexit.register(lambda: Path(mark).write_text(f"cleaned up by {os.getpid()}"))
