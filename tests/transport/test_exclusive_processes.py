"""An exclusive consumer's process killed with ``kill -9``: its standby takes over.

The in-process crash (``abort``) is in the contract suite; this is the real thing, on
every transport whose broker outlives a process (the memory broker does not).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from transport_params import transports
from zocalo.transport import Transport

HOLDER = Path(__file__).with_name("exclusive_holder.py")
SENTINEL = b"--sentinel--"


class Holder:
    """exclusive_holder.py in its own process group, its stdout lines collected."""

    def __init__(self, url: str, queue_name: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(HOLDER), url, queue_name],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, expected: str, timeout: float = 20.0) -> None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {expected!r} from the holder in {timeout}s") from None
        assert line == expected, f"expected {expected!r}, the holder said {line!r}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


@pytest.fixture
def holder() -> Iterator[Callable[[str, str], Holder]]:
    started: list[Holder] = []

    def start(url: str, queue_name: str) -> Holder:
        started.append(Holder(url, queue_name))
        return started[-1]

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def broker_url(each_transport_url: str) -> str:
    """Each transport parametrized below (``client`` connects to it)."""
    return each_transport_url


@pytest.mark.parametrize(
    "each_transport_url",
    transports("sqlite", "rabbitmq", "stomp"),
    indirect=True,
)
def test_a_killed_holder_hands_the_queue_to_its_standby(
    each_transport_url: str, client: Transport, holder: Callable, collector: Callable
) -> None:
    queue_name = f"exclusive.{uuid.uuid4().hex[:8]}"
    client.declare_queue(queue_name)
    process = holder(each_transport_url, queue_name)
    process.wait_for("subscribed")
    client.send(queue_name, b"m0")
    process.wait_for("holding m0")

    standby = collector(ack_with=client)
    client.subscribe(queue_name, standby, prefetch=10, exclusive=True)
    client.send(queue_name, b"m1")
    process.wait_for("holding m1")  # the standby got nothing: m1 went to the holder
    assert standby.bodies == []

    process.kill()
    killed_at = time.monotonic()
    client.send(queue_name, SENTINEL)
    deliveries = standby.wait_until(
        lambda got: {d.body for d in got} >= {b"m0", b"m1", SENTINEL},
        "m0 and m1 again, and the sentinel",
        timeout=20,
    )
    print(f"\ntakeover after kill -9: {(time.monotonic() - killed_at) * 1000:.0f} ms")
    assert sorted(d.body for d in deliveries) == sorted([b"m0", b"m1", SENTINEL])
    assert all(d.redelivered == (d.body != SENTINEL) for d in deliveries)
