"""A site for the shipped services: recipe library, logbook, configuration, plugins; and
private database servers (started once per session) with fresh databases on them.

The Dispatcher's filter and readiness check come from ``plugins/``: a module and
the ``*.dist-info`` that registers it under python-zocalo's entry point groups.
Putting that directory on the path installs them (``importlib.metadata`` reads
any ``*.dist-info`` on ``sys.path``), for one test or one service process, with
nothing to install into the virtual environment.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from join_jobs import JOINED, TIMED_OUT
from private_databases import MariaDBServer, PostgresServer, PrivateServer
from writer_jobs import WRITTEN

from transport_params import transports
from zocalo.config import load_configuration
from zocalo.launch import ServiceProcesses
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.services import dbwriter, join
from zocalo.services.dispatcher import Dispatcher
from zocalo.transport import Transport, create_transport, dlq_name

PLUGINS = Path(__file__).parent / "plugins"

#: Two steps: find spots (the demo's service) -> one JSON line per image.
SPOTS_RECIPE = {
    "1": {"service": "Find spots", "queue": "demo.find_spots", "output": 2},
    "2": {
        "service": "Results as JSON lines",
        "queue": "jsonlines",
        "parameters": {"output_filename": "{results}/{guid}.jsonl"},
    },
    "start": [[1, {"image": "{$REPLACE:image}"}]],
}

#: One step whose queue the request names, so every test has queues of its own.
ONE_STEP_RECIPE = {
    "1": {"queue": "{first_queue}", "parameters": {"found": "{looked_up}"}},
    "start": [[1, {"dc": "{ispyb_dcid}"}]],
}

#: Fails validation: step 1 links to a step that does not exist.
BROKEN_RECIPE = {"1": {"queue": "anywhere", "output": 9}, "start": [[1, {}]]}


@dataclass
class Site:
    """A facility's setup in a temporary directory."""

    root: Path
    config: Path
    recipes: Path
    logbook: Path
    results: Path

    def add_recipe(self, name: str, recipe: Any) -> None:
        text = recipe if isinstance(recipe, str) else json.dumps(recipe)
        (self.recipes / f"{name}.json").write_text(text)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    recipes, logbook, results = (tmp_path / name for name in ("recipes", "logbook", "results"))
    recipes.mkdir()
    config = tmp_path / "site.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            site-storage:
              plugin: storage
              zocalo.recipe_directory: {recipes}
              zocalo.dispatcher.logbook_location: {logbook}
            environments:
              default: [site-storage]
            """
        )
    )
    made = Site(tmp_path, config, recipes, logbook, results)
    made.add_recipe("spots", SPOTS_RECIPE)
    made.add_recipe("one-step", ONE_STEP_RECIPE)
    made.add_recipe("broken", BROKEN_RECIPE)
    return made


@pytest.fixture
def plugins_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test plugins, visible to ``importlib.metadata`` in this process."""
    monkeypatch.syspath_prepend(str(PLUGINS))


def plugins_environment() -> dict[str, str]:
    """This process's environment, with the test plugins on the path (for a service process)."""
    path = os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


@pytest.fixture
def service_processes(site: Site) -> Iterator[Callable[..., ServiceProcesses]]:
    """``service_processes(url, *names)``: real ``zocalo.service`` processes on the site's
    configuration, with the test plugins installed; stopped at teardown."""
    started: list[ServiceProcesses] = []

    def start(url: str, *names: str) -> ServiceProcesses:
        services = ServiceProcesses(
            names, url, options=["--config", str(site.config)], env=plugins_environment()
        )
        services.__enter__()
        started.append(services)
        return services

    yield start
    for services in started:
        services.stop()


def rabbitmq_url(request: pytest.FixtureRequest) -> str:
    """The session's RabbitMQ vhost; the queues this test makes there go when it ends.

    (Asked for by name at run time, the vhost is not seen by the autouse clean-up of
    ``tests/conftest.py``, which looks at the fixtures a test names.)
    """
    vhost = request.getfixturevalue("rabbitmq_vhost")
    before = vhost.queue_names()
    request.addfinalizer(lambda: vhost.delete_queues(vhost.queue_names() - before))
    return vhost.url


def broker_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker of ``kind`` for this test: a fresh memory broker or SQLite file, the
    session's RabbitMQ vhost, or a prefix of its own on the session's ActiveMQ."""
    if kind == "memory":
        return f"memory://services-{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    if kind == "stomp":
        prefix = f"services{uuid.uuid4().hex[:8]}"
        return str(request.getfixturevalue("activemq").url(prefix=prefix))
    return rabbitmq_url(request)


@pytest.fixture(params=transports("memory", "sqlite", "rabbitmq"))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker for services on threads of this process (a module may add ``"stomp"``,
    parametrizing ``url`` with ``indirect=True``)."""
    return broker_url(request.param, request, tmp_path)


@pytest.fixture(params=transports("sqlite", "rabbitmq"))
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker every process can reach."""
    return broker_url(request.param, request, tmp_path)


@pytest.fixture
def client(url: str) -> Iterator[Transport]:
    with create_transport(url) as transport:
        yield transport


@pytest.fixture
def dispatcher(
    url: str, site: Site, plugins_installed: None, start_service: Callable[..., ServiceRunner]
) -> ServiceRunner:
    """A Dispatcher on a thread of this process, on the site's configuration."""
    service = Dispatcher()
    service.site_config = load_configuration(site.config)
    return start_service(service, url)


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own (RabbitMQ's vhost lasts the whole session)."""
    return f"services.{uuid.uuid4().hex[:12]}"


# -- brokers, and a runner to stop, for Schlockmeister and the Mailer ------------------------


_RABBITMQ = pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)
_STOMP = pytest.param("stomp", marks=pytest.mark.stomp)


@pytest.fixture(params=["memory", "sqlite", _RABBITMQ, _STOMP])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL of each kind: in-process, embedded (a fresh file), RabbitMQ, ActiveMQ
    (under a prefix of this test's own)."""
    if request.param == "memory":
        return f"memory://services-{uuid.uuid4().hex}"
    return cross_process_url(request, tmp_path)


@pytest.fixture(params=["sqlite", _RABBITMQ, _STOMP])
def cross_process_broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL that other processes reach too: embedded, RabbitMQ, ActiveMQ."""
    return cross_process_url(request, tmp_path)


def cross_process_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    if request.param == "stomp":
        return str(request.getfixturevalue("activemq").url(prefix=f"svc{uuid.uuid4().hex[:8]}"))
    return str(request.getfixturevalue("rabbitmq_vhost_url"))


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


#: Every queue the Join and DatabaseWriter tests use (fixed names, unlike ``queue`` below).
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


@pytest.fixture(params=transports("sqlite", "rabbitmq"))
def broker(request: pytest.FixtureRequest, sqlite_broker: str) -> str:
    """The URL of each broker that carries messages between processes, for the Join and
    DatabaseWriter process tests.

    Those services' queues have fixed names: on RabbitMQ (the session's vhost) whatever
    an earlier test left in them (a message a killed service never acknowledged) is
    deleted first.
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


@pytest.fixture
def memory_client(broker_url: str) -> Iterator[Transport]:
    """A connection to the in-memory broker ``start_service`` runs services on by default."""
    with create_transport(broker_url) as transport:
        yield transport
