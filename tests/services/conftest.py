"""Private database servers (started once per session) and fresh databases on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from join_jobs import JOINED, TIMED_OUT
from private_databases import MariaDBServer, PostgresServer, PrivateServer
from writer_jobs import WRITTEN

from zocalo.services import dbwriter, join
from zocalo.transport import Transport, create_transport, dlq_name

#: Every queue these tests use on a broker shared by the session (RabbitMQ's vhost).
QUEUES = {join.QUEUE, dbwriter.QUEUE, JOINED, TIMED_OUT, WRITTEN}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    server = MariaDBServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


SERVERS = {"postgresql": "postgres_server", "mariadb": "mariadb_server"}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or one on each private server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/results.db"
    server: PrivateServer = request.getfixturevalue(SERVERS[request.param])
    server.start()  # a test before may have stopped it
    return server.new_database()


@pytest.fixture(params=["postgresql", "mariadb"])
def database_server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    """Each private server in turn, running; started again afterwards if a test stopped it."""
    server: PrivateServer = request.getfixturevalue(SERVERS[request.param])
    server.start()
    yield server
    server.start()


@pytest.fixture(params=["sqlite", "rabbitmq"])
def broker(request: pytest.FixtureRequest, sqlite_broker: str) -> str:
    """The URL of each broker that carries messages between processes.

    On RabbitMQ the queues are the session's: whatever an earlier test left in them
    (a message a killed service never acknowledged) is deleted first.
    """
    if request.param == "sqlite":
        return sqlite_broker
    vhost = request.getfixturevalue("rabbitmq_vhost")
    vhost.delete_queues(QUEUES | {dlq_name(queue) for queue in QUEUES})
    return vhost.url


@pytest.fixture
def on_broker(broker: str) -> Iterator[Transport]:
    """A client connection; the services' queues exist before they start."""
    with create_transport(broker) as transport:
        transport.declare_queue(join.QUEUE)
        transport.declare_queue(dbwriter.QUEUE)
        yield transport
