"""The shipped services with test-sized waits, and a Join that crashes where it hurts most.

Run by the process tests as ``zocalo.service -s facility_services:NAME`` (this
directory is on the services' PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from zocalo.recipe.step import RecipeStep
from zocalo.service import handler
from zocalo.services.dbwriter import DatabaseWriter
from zocalo.services.join import QUEUE, Join


class QuickWriter(DatabaseWriter):
    first_wait = 0.1
    max_wait = 1.0


class QuickJoin(Join):
    first_wait = 0.1
    max_wait = 1.0


class CrashingJoin(QuickJoin):
    """kill -9 of its own worker right after the part numbered ``$JOIN_CRASH_AFTER`` was
    committed, before the runner publishes and acks: once (``$JOIN_CRASH_MARK`` remembers)."""

    @handler(QUEUE, prefetch=20)
    def collect(self, step: RecipeStep, payload: Any) -> None:
        super().collect(step, payload)
        mark = Path(os.environ["JOIN_CRASH_MARK"])
        if payload.get("i") == int(os.environ["JOIN_CRASH_AFTER"]) and not mark.exists():
            mark.write_text("crashed")
            os.kill(os.getpid(), signal.SIGKILL)
