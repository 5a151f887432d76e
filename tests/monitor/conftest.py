"""Supervised services and a broker file per test, always stopped at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zocalo.transport import Transport, create_transport

HERE = Path(__file__).parent


@pytest.fixture
def sqlite_broker(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/broker.db"


@pytest.fixture
def broker_client(sqlite_broker: str) -> Iterator[Transport]:
    with create_transport(sqlite_broker) as transport:
        yield transport


def stop_group(process: subprocess.Popen) -> None:
    """Kill a process started with ``start_new_session`` and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@pytest.fixture
def supervised(sqlite_broker: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``supervised(service, *options)``: zocalo.service in its own process group."""
    started: list[subprocess.Popen[bytes]] = []

    def start(service: str, *options: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zocalo.cli.service",
                "-s",
                service,
                "--transport",
                sqlite_broker,
                *options,
            ],
            env=dict(os.environ, PYTHONPATH=str(HERE)),
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        stop_group(process)


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
