"""Fixtures for the transport contract suite.

Every test in ``test_contract.py`` runs once per entry of :data:`TRANSPORTS`.
Adding a broker is one line there: a ``pytest.param`` wrapping a factory that
returns a fresh, isolated URL for one test (given the test's fixture request,
to ask for what the broker needs, e.g. ``tmp_path``). A broker that runs as a
server carries the marker naming it, and its factory asks for its fixture only
when called: a test of another transport never contacts it.

Timing rule for the whole suite: never sleep to wait for something to happen.
Consumers run on the transport's own callback thread and feed a ``Collector``
(the ``collector`` fixture, shared from ``tests/conftest.py``); tests wait on
its condition with a deadline. To show that nothing *else* arrives, send a
sentinel afterwards and wait for that (FIFO).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from zocalo.errors import ZocaloError
from zocalo.transport import Transport, create_transport


def memory_url(request: pytest.FixtureRequest) -> str:
    # One broker per test: every transport on this NAME shares it.
    return f"memory://contract-{uuid.uuid4().hex}"


def sqlite_url(request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{request.getfixturevalue('tmp_path')}/broker.db"


def rabbitmq_url(request: pytest.FixtureRequest) -> str:
    # The session's private vhost; names are unique per test, so tests never meet.
    return request.getfixturevalue("rabbitmq_vhost_url")


def stomp_url(request: pytest.FixtureRequest) -> str:
    # The session's private ActiveMQ (started on first use); names are unique per test.
    return request.getfixturevalue("activemq").url(prefix="contract")


def stomp_rabbitmq_url(request: pytest.FixtureRequest) -> str:
    # The session's private RabbitMQ node with the STOMP plugin (started on first use).
    return request.getfixturevalue("rabbitmq_stomp").url(prefix="contract", vhost="/")


#: The transports under contract test. One line per broker.
TRANSPORTS = [
    pytest.param(memory_url, id="memory"),
    pytest.param(sqlite_url, id="sqlite"),
    pytest.param(rabbitmq_url, id="rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param(stomp_url, id="stomp", marks=pytest.mark.stomp),
    pytest.param(stomp_rabbitmq_url, id="stomp-rabbitmq", marks=pytest.mark.stomp),
]

#: One broker server per client library (pika, stomp.py): what their connections share
#: (``zocalo.transport.reconnect``) is tested on these.
SERVERS = [param for param in TRANSPORTS if param.id in ("rabbitmq", "stomp")]


@pytest.fixture(params=TRANSPORTS)
def transport_url(request: pytest.FixtureRequest) -> str:
    """A fresh URL, isolated from every other test, for the transport under test."""
    factory: Callable[[pytest.FixtureRequest], str] = request.param
    return factory(request)


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> str:
    """As ``transport_url``, for the transports of :data:`SERVERS`."""
    factory: Callable[[pytest.FixtureRequest], str] = request.param
    return factory(request)


@pytest.fixture
def connect(transport_url: str) -> Iterator[Callable[..., Transport]]:
    """``connect(**options)``: a connected transport on ``transport_url``.

    Options (e.g. ``delivery_limit``) go to ``create_transport``. Each call is
    a separate connection; all are closed at teardown (aborted if that fails).
    """
    opened: list[Transport] = []

    def open_connection(**options: object) -> Transport:
        transport = create_transport(transport_url, **options)
        opened.append(transport)
        transport.connect()
        return transport

    yield open_connection
    for transport in reversed(opened):
        try:
            transport.close()
        except ZocaloError:
            transport.abort()


@pytest.fixture
def transport(connect: Callable[..., Transport]) -> Transport:
    """One connected transport."""
    return connect()


@pytest.fixture
def name(request: pytest.FixtureRequest, connect: Callable[..., Transport]) -> Callable[..., str]:
    """``name(label)``: a unique queue, declared; ``name(label, topic=True)``: a topic.

    Names are unique so tests never meet on a shared broker. Queues are
    declared because some brokers (RabbitMQ) refuse a send to a queue that
    does not exist yet.
    """
    prefix = f"contract.{request.node.name.split('[')[0]}.{uuid.uuid4().hex[:8]}"
    declarer: list[Transport] = []

    def make(label: str, *, topic: bool = False) -> str:
        full = f"{prefix}.{label}"
        if not topic:
            if not declarer:
                declarer.append(connect())
            declarer[0].declare_queue(full)
        return full

    return make
