"""Fixtures for the ActiveMQ tests: the session's private broker (see ``activemq`` in
``tests/conftest.py``), our transport on it, and python-workflows' StompTransport on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from stomp_helpers import PREFIX

from zocalo.service import RunnerSettings, Service, ServiceRunner
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
def run_service(stomp_url: str) -> Iterator[Callable[..., ServiceRunner]]:
    """``run_service(service, url=None)``: a ServiceRunner on a thread until the test ends."""
    running: list[tuple[ServiceRunner, threading.Thread]] = []

    def start(service: Service, url: str | None = None) -> ServiceRunner:
        runner = ServiceRunner(
            service, create_transport(url or stomp_url), RunnerSettings(retry_delay=0.05)
        )
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        assert runner.started.wait(20)
        running.append((runner, thread))
        return runner

    yield start
    for runner, thread in running:
        runner.request_stop()
        thread.join(20)
        assert not thread.is_alive(), f"{runner.service.name} did not stop"
