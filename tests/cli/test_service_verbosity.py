"""What ``zocalo.service -v``/``-vv`` prints when a service starts on a fresh RabbitMQ vhost.

``-v`` is for the service's own DEBUG lines; pika's (hundreds of lines per start)
come only with ``-vv``. Starting on a vhost where nothing exists yet makes the
transport ask by passive declares whether its queues and exchange exist: a "no"
is expected there, and pika must not log it as a WARNING.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import uuid

import pytest

from rabbit_broker import PrivateVhost
from zocalo.service.runner import STARTED_MARK, STOPPED_MARK

pytestmark = pytest.mark.rabbitmq

DEADLINE = 60.0


def service_log(url: str, *options: str) -> list[str]:
    """Start demo.FindSpots on ``url``, stop it once started; its whole stderr, by line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "zocalo.cli.service", "-s", "demo.FindSpots", "--transport", url,
         *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if STARTED_MARK in line and "zocalo.service.runner" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(DEADLINE), "the service did not start:\n" + "".join(lines[-30:])
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(DEADLINE) == 0, "".join(lines[-30:])
        reader.join(DEADLINE)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    assert any(STOPPED_MARK in line for line in lines), "".join(lines[-30:])
    return lines


def from_logger(lines: list[str], level: str, prefix: str) -> list[str]:
    """Lines of the text log format (``time LEVEL logger [...] message``) at ``level``."""
    pattern = re.compile(rf"^\S+ \S+ {level} +{re.escape(prefix)}[.\s]")
    return [line for line in lines if pattern.match(line)]


@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
def test_pika_debug_only_at_vv_and_no_warnings_from_probing(verbosity: str) -> None:
    with PrivateVhost(f"zocalo-test-{os.getpid()}-verbosity-{uuid.uuid4().hex[:6]}") as vhost:
        lines = service_log(vhost.url, verbosity)
    text = "".join(lines)
    assert from_logger(lines, "DEBUG", "zocalo"), f"-v shows zocalo's DEBUG lines:\n{text}"
    pika_debug = from_logger(lines, "DEBUG", "pika")
    if verbosity == "-v":
        assert not pika_debug, f"{len(pika_debug)} pika DEBUG lines at -v, e.g. {pika_debug[:3]}"
    else:
        assert pika_debug, "-vv shows pika's DEBUG lines"
    # A queue, its dead-letter queue and the status exchange were all probed (and absent).
    warnings = from_logger(lines, "WARNING", "pika")
    assert not warnings, f"pika warnings on a normal start: {warnings}"
