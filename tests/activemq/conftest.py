"""Fixtures for the ActiveMQ tests: the session's private broker (see ``activemq`` in
``tests/conftest.py``), our transport on it, and python-workflows' StompTransport on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from stomp_helpers import PREFIX

from zocalo.service import ServiceRunner
from zocalo.transport import Transport, create_transport


@pytest.fixture
def stomp_url(activemq: Any) -> str:
    return activemq.url(prefix=PREFIX)


@pytest.fixture
def stomp(stomp_url: str) -> Iterator[Transport]:
    """A connected transport on the session's broker."""
    with create_transport(stomp_url) as transport:
        yield transport


@pytest.fixture
def theirs(activemq: Any) -> Iterator[Callable[[], Any]]:
    """``theirs()``: a connected python-workflows StompTransport on the same broker."""
    from workflows.transport.stomp_transport import StompTransport

    class Configured(StompTransport):
        config = {
            "--stomp-host": "127.0.0.1",
            "--stomp-port": activemq.stomp_port,
            "--stomp-user": "zocalo",
            "--stomp-pass": activemq.password,
            "--stomp-prfx": PREFIX,
        }

    opened: list[Any] = []

    def connect() -> Any:
        transport = Configured()
        transport.connect()
        opened.append(transport)
        return transport

    yield connect
    for transport in opened:
        transport.disconnect()


@pytest.fixture
def run_service(
    stomp_url: str, start_service: Callable[..., ServiceRunner]
) -> Callable[..., ServiceRunner]:
    """``run_service(service, url=None)``: ``start_service`` on ActiveMQ, retrying after 0.05 s."""
    return lambda service, url=None: start_service(service, url or stomp_url, retry_delay=0.05)
