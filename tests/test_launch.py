"""Launching services as threads: a service that cannot start leaves nothing running."""

from __future__ import annotations

import threading

import pytest

from zocalo import Service, handler
from zocalo.launch import ServiceStartFailed, ServiceThreads


class Echo(Service):
    name = "Echo"

    @handler("launch.echo")
    def echo(self, step, payload):
        step.send(payload)


class BrokenStart(Service):
    name = "BrokenStart"

    def initializing(self) -> None:
        raise OSError("the detector share is not mounted")

    @handler("launch.broken")
    def never(self, step, payload):
        pass


def test_a_service_that_fails_to_start_stops_the_ones_already_started(tmp_path):
    threads = ServiceThreads([Echo(), BrokenStart()], f"sqlite:///{tmp_path}/broker.db")
    with pytest.raises(ServiceStartFailed, match=r"BrokenStart did not start: .*not mounted"):
        threads.__enter__()
    echo_thread, broken_thread = threads.threads
    assert not echo_thread.is_alive(), "the service started first was left running"
    assert not broken_thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("service-")]
    assert not threads.runners[1].transport.connected, "the failed service kept its connection"


def test_a_failed_start_is_reported_at_once_not_after_the_start_timeout(tmp_path):
    threads = ServiceThreads([BrokenStart()], f"sqlite:///{tmp_path}/broker.db")
    threads.START_TIMEOUT = 600  # a wait for the timeout would hang the test
    with pytest.raises(ServiceStartFailed, match="not mounted"):
        threads.__enter__()
