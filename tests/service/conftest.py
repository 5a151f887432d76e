"""Supervised services in real process groups, always stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_services_helpers import StatusWatch

from zocalo.service.status import STATUS_TOPIC
from zocalo.transport import Transport

HERE = Path(__file__).parent


@pytest.fixture
def status_watch(client_url_transport: Transport) -> StatusWatch:
    watch = StatusWatch()
    client_url_transport.subscribe_broadcast(STATUS_TOPIC, watch)
    return watch


@pytest.fixture
def client_url_transport(sqlite_broker: str) -> Iterator[Transport]:
    from zocalo.transport import create_transport

    with create_transport(sqlite_broker) as transport:
        yield transport
