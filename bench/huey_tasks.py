"""Huey side of ``bench/embedded.py``: step1 -> step2 -> collect as chained tasks.

The consumer is started as ``huey_consumer huey_tasks.huey`` with the broker
file in ``$HUEY_BENCH_DB``; the collector task reports each completion with a
``time.time()`` stamp over a Unix datagram socket (abstract namespace, named
by ``$HUEY_BENCH_SOCKET``) to the bench process, which costs one ``sendto``
and touches no file, so it adds next to nothing to the measured latency.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from huey import SqliteHuey

_sender: socket.socket | None = None


def _report(payload: dict[str, Any]) -> None:
    global _sender
    if _sender is None:  # one per process: the workers are forked
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    seen = time.time()
    message = json.dumps({"n": payload["n"], "t": payload["t"], "seen": seen})
    _sender.sendto(message.encode(), "\0" + os.environ["HUEY_BENCH_SOCKET"])


def build(filename: str) -> tuple[SqliteHuey, Any]:
    """A Huey on ``filename`` (default settings) and its first task."""
    instance = SqliteHuey("bench", filename=filename)

    @instance.task()
    def collect(payload: dict[str, Any]) -> None:
        _report(payload)

    @instance.task()
    def step2(payload: dict[str, Any]) -> None:
        collect(payload)

    @instance.task()
    def step1(payload: dict[str, Any]) -> None:
        step2(payload)

    return instance, step1


huey, step1 = build(os.environ.get("HUEY_BENCH_DB", ":memory:"))
