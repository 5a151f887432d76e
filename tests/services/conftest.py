"""Brokers of every kind for the shipped services, and a way to run a service on one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.transport import create_transport


@pytest.fixture(params=["memory", "sqlite", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL of each kind: in-process, embedded (a fresh file), RabbitMQ."""
    if request.param == "memory":
        return f"memory://services-{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    return request.getfixturevalue("rabbitmq_vhost_url")


@pytest.fixture(params=["sqlite", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def cross_process_broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL that other processes reach too: embedded, RabbitMQ."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    return request.getfixturevalue("rabbitmq_vhost_url")


@pytest.fixture
def run_service() -> Iterator[Callable[..., ServiceRunner]]:
    """``run_service(service, url, **settings)``: run it on a thread until stopped or the
    test ends; ``runner.stop_and_wait()`` stops it."""
    running: list[tuple[ServiceRunner, threading.Thread]] = []

    def start(service: Service, url: str, **settings: object) -> ServiceRunner:
        runner = ServiceRunner(service, create_transport(url), RunnerSettings(**settings))  # type: ignore[arg-type]
        thread = threading.Thread(target=runner.run, name=f"test-{service.name}", daemon=True)
        thread.start()
        assert runner.started.wait(30), f"{service.name} did not start"
        running.append((runner, thread))

        def stop_and_wait() -> None:
            runner.request_stop()
            thread.join(30)
            assert not thread.is_alive(), f"{service.name} did not stop"

        runner.stop_and_wait = stop_and_wait  # type: ignore[attr-defined]
        return runner

    yield start
    for runner, thread in running:
        runner.request_stop()
        thread.join(30)
        assert not thread.is_alive(), f"{runner.service.name} did not stop"
