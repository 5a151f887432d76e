"""Private database servers (started once per session) and fresh databases on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from private_databases import MariaDBServer, PostgresServer, PrivateServer


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
