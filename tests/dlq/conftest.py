"""One broker of each kind the dead-letter tools run on, and dead letters to put in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dlq_helpers import Broker


@pytest.fixture(params=["sqlite", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker(request: pytest.FixtureRequest, tmp_path: Path, collector) -> Iterator[Broker]:
    """The embedded broker (a fresh file) and RabbitMQ (the session's vhost)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
    else:
        url = request.getfixturevalue("rabbitmq_vhost_url")
    broker = Broker(request.param, url, collector)
    yield broker
    broker.close()


@pytest.fixture
def make_broker(collector) -> Iterator[Callable[[str], Broker]]:
    """``make_broker(url)``: a :class:`Broker` for ``url``, closed at the end of the test."""
    made: list[Broker] = []

    def make(url: str) -> Broker:
        kind = "rabbitmq" if url.startswith("amqp") else "sqlite"
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
