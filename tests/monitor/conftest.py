"""Supervised services and a broker file per test, always stopped at the end."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from zocalo.transport import Transport, create_transport

HERE = Path(__file__).parent


@pytest.fixture
def broker_client(sqlite_broker: str) -> Iterator[Transport]:
    with create_transport(sqlite_broker) as transport:
        yield transport


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
