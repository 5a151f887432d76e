"""Memory recycling: a worker whose memory grew past a limit hands over to a fresh one.

Checked after each message (a cheap read of ``/proc/self/statm``): past the
limit, the message in hand is already settled, prefetched ones go back to the
queue as the service stops cleanly, and the worker exits ``RECYCLE`` so that
its supervisor starts a fresh one at once.
"""

from __future__ import annotations

import logging
import os
import threading

from zocalo.service.middleware.base import InHand, Middleware, Runner

log = logging.getLogger("zocalo.service.middleware.memory_limit")

MIB = 1024 * 1024


def resident_mib() -> float:
    """This process's resident memory in MiB (``/proc/self/statm``: a cheap read)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


class MemoryLimit(Middleware):
    """Stop the service cleanly after the message that took memory past ``limit`` MiB.

    ``recycled`` is set when it did. A limit below what the worker used when
    this was made (a fresh worker, before it connects) is ignored with an
    error: every worker would otherwise be replaced after one message.
    """

    def __init__(self, limit: float) -> None:
        self.limit: float | None = limit
        self.at_start = resident_mib()
        self.recycled = threading.Event()

    def on_start(self, runner: Runner) -> None:
        if self.limit is not None and self.at_start >= self.limit:
            log.error(
                "--max-memory %g MiB is below what a fresh worker of %s uses (%.0f MiB): "
                "ignoring it, as every worker would be replaced after one message",
                self.limit,
                runner.service.name,
                self.at_start,
            )
            self.limit = None

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        limit = self.limit
        if limit is None or self.recycled.is_set() or (used := resident_mib()) <= limit:
            return
        self.recycled.set()
        log.warning(
            "worker of %s uses %.0f MiB, more than --max-memory %g MiB: finishing and "
            "handing over to a fresh worker",
            runner.service.name,
            used,
            limit,
        )
        runner.request_stop()
