"""One broker of each kind the dead-letter tools run on, and dead letters to put in it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dlq_helpers import Broker


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("stomp", marks=pytest.mark.stomp),
    ]
)
def broker(request: pytest.FixtureRequest, tmp_path: Path, collector) -> Iterator[Broker]:
    """The embedded broker (a fresh file), RabbitMQ (the session's vhost) and ActiveMQ
    (the session's broker, under a prefix of this test's own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
    elif request.param == "stomp":
        url = request.getfixturevalue("activemq").url(prefix=f"dlq{uuid.uuid4().hex[:8]}")
    else:
        url = request.getfixturevalue("rabbitmq_vhost_url")
    broker = Broker(request.param, url, collector)
    yield broker
    broker.close()


@pytest.fixture(params=["sqlite", pytest.param("stomp", marks=pytest.mark.stomp)])
def own_broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker whose queues are this test's alone, so that "every dead-letter queue" is
    known: a fresh embedded broker file, or ActiveMQ under a prefix of the test's own
    (not RabbitMQ: its vhost is the session's)."""
    if request.param == "stomp":
        return str(request.getfixturevalue("activemq").url(prefix=f"own{uuid.uuid4().hex[:8]}"))
    return f"sqlite:///{tmp_path}/broker.db"


@pytest.fixture
def make_broker(collector) -> Iterator[Callable[[str], Broker]]:
    """``make_broker(url)``: a :class:`Broker` for ``url``, closed at the end of the test."""
    made: list[Broker] = []

    def make(url: str) -> Broker:
        kinds = {"amqp": "rabbitmq", "stomp": "stomp"}
        kind = next((k for scheme, k in kinds.items() if url.startswith(scheme)), "sqlite")
        made.append(Broker(kind, url, collector))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def run() -> Callable[..., Result]:
    """``run(command, *arguments)``: a click command's result, exceptions not caught."""

    def invoke(command: Any, *arguments: str, input: str | None = None) -> Result:
        return CliRunner().invoke(command, list(arguments), input=input, catch_exceptions=False)

    return invoke
