"""Fixtures shared by every test directory."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from private_server import serving
from transport_params import transports
from zocalo.service import RunnerSettings, Service, ServiceRunner
from zocalo.service.middleware import Middleware, default_middleware
from zocalo.transport import Delivery, Outgoing, Transport, create_transport

#: How long a test waits for something that should happen promptly. Waits
#: return as soon as their condition holds, so this only matters on failure.
DEADLINE = 5.0


class Collector:
    """A subscription callback that records deliveries and lets tests wait on them.

    With ``ack_with`` set, each delivery is acknowledged on the callback thread
    (before it is recorded) through that transport. Nothing here sleeps: waits
    are on a condition notified per delivery, with a deadline.
    """

    def __init__(self, ack_with: Transport | None = None) -> None:
        self.ack_with = ack_with
        self._condition = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._arrivals: list[float] = []

    def __call__(self, delivery: Delivery) -> None:
        self._record(delivery, self.ack_with)

    def acking(self, transport: Transport) -> Callable[[Delivery], None]:
        """A callback recording into this collector that acks through ``transport``.

        For several subscriptions on different connections feeding one collector.
        """
        return lambda delivery: self._record(delivery, transport)

    def _record(self, delivery: Delivery, ack_with: Transport | None) -> None:
        arrived = time.monotonic()
        if ack_with is not None and delivery.ackable:
            ack_with.ack(delivery)
        with self._condition:
            self._deliveries.append(delivery)
            self._arrivals.append(arrived)
            self._condition.notify_all()

    @property
    def deliveries(self) -> list[Delivery]:
        with self._condition:
            return list(self._deliveries)

    @property
    def bodies(self) -> list[bytes]:
        return [delivery.body for delivery in self.deliveries]

    def arrival(self, body: bytes) -> float:
        """``time.monotonic()`` when the first delivery of ``body`` arrived."""
        with self._condition:
            for delivery, arrived in zip(self._deliveries, self._arrivals, strict=True):
                if delivery.body == body:
                    return arrived
        raise AssertionError(f"{body!r} never arrived")

    def wait_until(
        self,
        predicate: Callable[[list[Delivery]], bool],
        what: str,
        timeout: float = DEADLINE,
    ) -> list[Delivery]:
        """Wait (with a deadline) until ``predicate(deliveries)`` holds; return them."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._deliveries), timeout):
                received = [delivery.body for delivery in self._deliveries]
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; received {received!r}"
                )
            return list(self._deliveries)

    def wait_for_count(self, count: int, timeout: float = DEADLINE) -> list[Delivery]:
        return self.wait_until(
            lambda deliveries: len(deliveries) >= count, f"{count} deliveries", timeout
        )

    def wait_for_every_number(self, total: int, what: str, timeout: float = 90) -> int:
        """Wait until a recipe message of each payload ``{"n": n}``, ``n`` below ``total``,
        has arrived (after ``what``: a restart, say); return how many arrived twice."""
        received = self.wait_until(
            lambda ds: {json.loads(d.body)["payload"]["n"] for d in ds} >= set(range(total)),
            f"every message after {what}",
            timeout,
        )
        return len(received) - total

    def wait_for_body(self, body: bytes, timeout: float = DEADLINE) -> list[Delivery]:
        return self.wait_until(
            lambda deliveries: any(delivery.body == body for delivery in deliveries),
            f"a delivery of {body!r}",
            timeout,
        )


@pytest.fixture
def collector() -> Callable[..., Collector]:
    """``collector()`` or ``collector(ack_with=transport)``: a new :class:`Collector`."""
    return Collector


class DroppedReplies:
    """The replies the transports of this process logged as dropped (see ``Outgoing``:
    a reply whose queue has gone), by queue, from ``caplog``."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING)
        self.caplog = caplog

    def records(self, queue: str) -> list[logging.LogRecord]:
        prefix = f"dropped a reply to queue {queue!r}"
        return [record for record in self.caplog.records if record.getMessage().startswith(prefix)]

    def count(self, queue: str) -> int:
        return len(self.records(queue))

    def wait_until_gone(self, transport: Transport, queue: str, timeout: float = DEADLINE) -> None:
        """Send droppable probes to ``queue`` on ``transport`` until one is dropped: the
        broker has noticed that the queue's connection went (at once when it closed, once
        reaped when it died). Nothing announces that, so this polls, with a deadline."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while not self.count(queue):
            assert time.monotonic() < deadline, f"reply queue {queue!r} outlived its connection"
            transport.publish([Outgoing(queue, b"probe", droppable=True)]).result(timeout)
            pause.wait(0.05)


@pytest.fixture
def dropped_replies(caplog: pytest.LogCaptureFixture) -> DroppedReplies:
    """Counts the replies dropped in this process; waits until a reply queue has gone."""
    return DroppedReplies(caplog)


@pytest.fixture
def let_time_pass() -> Callable[[float], None]:
    """Let wall-clock time pass when nothing observable marks the moment.

    Only for waiting out an *expiration*: an expired message produces no event
    to wait on, so the one honest option is to let the clock run past the
    deadline. It waits on a never-set Event (with a monotonic deadline loop in
    case of early wake-ups); do not use it to wait for a delivery.
    """

    def wait(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        never = threading.Event()
        while (remaining := deadline - time.monotonic()) > 0:
            never.wait(remaining)

    return wait


#: Fixtures that reach the machine's RabbitMQ: a test using one is marked ``rabbitmq``.
RABBITMQ_FIXTURES = frozenset({"rabbitmq_vhost", "rabbitmq_vhost_url"})
#: Fixtures that run the session's private Slurm cluster: a test using one is marked ``slurm``.
SLURM_FIXTURES = frozenset({"slurm_cluster"})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for a RabbitMQ fixture by name is a ``rabbitmq`` test, marked or not,
    so ``-m "not rabbitmq"`` leaves it out. (One that asks at run time, through
    ``request.getfixturevalue``, must carry the marker itself: see ``rabbitmq_vhost_url``.)
    Likewise a test of the Slurm cluster is a ``slurm`` test."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if RABBITMQ_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.rabbitmq)
        if SLURM_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Any]:
    """A private single-node Slurm cluster (see ``tests/slurm_cluster.py``), started when
    the first test that needs it runs and stopped, with every job, at the session's end."""
    from slurm_cluster import SlurmCluster, missing_packages

    missing = missing_packages()
    if missing:
        pytest.fail(
            f"the Slurm tests need {', '.join(missing)}: run scripts/install-slurm (make test "
            "does), or leave them out with -m 'not slurm'"
        )
    with SlurmCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[Any]:
    """A private vhost on the machine's RabbitMQ, deleted at the end of the session.

    Created when the first test that needs it runs, never before: a session of
    tests that do not use RabbitMQ never contacts it.
    """
    from rabbit_broker import PrivateVhost

    with PrivateVhost() as vhost:
        yield vhost


@pytest.fixture(scope="session")
def activemq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private ActiveMQ broker for this session (started on first use, seconds), stopped
    and deleted at the end: ``url(...)``, ``stop()``/``start()`` for a restart."""
    from activemq_broker import PrivateActiveMQ

    broker = PrivateActiveMQ(tmp_path_factory.mktemp("activemq"))
    yield from serving(broker, "activemq", lambda started: f"stomp {started.stomp_port}")


@pytest.fixture(scope="session")
def rabbitmq_stomp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private RabbitMQ node with the STOMP plugin for this session (started on first
    use, ~10 s), stopped and deleted at the end: ``url(...)``. The machine's RabbitMQ is
    left as it is (see ``tests/rabbitmq_stomp_broker.py``)."""
    from rabbitmq_stomp_broker import SERVER, PrivateRabbitMQStomp

    if not SERVER.exists():
        pytest.fail(
            f"the RabbitMQ STOMP tests need {SERVER} (Debian package rabbitmq-server), "
            "or leave them out with -m 'not stomp'"
        )
    broker = PrivateRabbitMQStomp(tmp_path_factory.mktemp("rabbitmq-stomp"))
    yield from serving(broker, "rabbitmq-stomp", lambda started: f"stomp {started.stomp_port}")


@pytest.fixture
def rabbitmq_vhost_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's vhost for one test; the queues the test made there go when it ends.

    Kept until the session's end, they exhausted the broker's file handles (see
    ``PrivateVhost.delete_queues``). Queue names are unique per test, so nothing
    another test needs goes. A test that reaches this without the ``rabbitmq``
    marker fails: ``-m "not rabbitmq"`` must never need the broker.
    """
    if request.node.get_closest_marker("rabbitmq") is None:
        pytest.fail(f"{request.node.nodeid} uses RabbitMQ: mark it pytest.mark.rabbitmq")
    rabbitmq_vhost = request.getfixturevalue("rabbitmq_vhost")  # after the check: no contact
    before = rabbitmq_vhost.queue_names()
    yield rabbitmq_vhost.url
    rabbitmq_vhost.delete_queues(rabbitmq_vhost.queue_names() - before)


@pytest.fixture(autouse=True)
def _never_the_users_broker(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """No test (nor a process it starts) may touch the user's default broker file."""
    guard = tmp_path_factory.mktemp("default-broker") / "broker.db"
    monkeypatch.setenv("ZOCALO_TRANSPORT", f"sqlite:///{guard}")


@pytest.fixture
def broker_url() -> str:
    """A fresh in-memory broker for one test."""
    return f"memory://test-{uuid.uuid4().hex}"


#: Every transport a service runs on, for tests of the runner. Their callbacks take
#: two paths through it: memory hands each delivery to the runner's own thread;
#: sqlite, RabbitMQ and ActiveMQ (``serial_callbacks``, the production path) have the
#: runner call the handler right on their callback thread. (RabbitMQ's STOMP plugin runs
#: the contract suite and its own service tests, ``tests/activemq/test_stomp_rabbitmq.py``:
#: it has no delays or reply queues, which tests here take for granted.)
EVERY_TRANSPORT = transports("memory", "sqlite", "rabbitmq", "stomp")


@pytest.fixture(params=EVERY_TRANSPORT)
def each_transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker of this test's own on each transport in turn (a fresh memory broker, a
    fresh SQLite file, the session's RabbitMQ vhost or ActiveMQ broker: name queues
    uniquely there).

    A test that needs a feature only some transports have narrows the list with
    ``@pytest.mark.parametrize("each_transport_url", [...], indirect=True)`` and
    says why in its docstring.
    """
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    if request.param == "stomp":
        return str(request.getfixturevalue("activemq").url(prefix="runner"))
    return request.getfixturevalue("rabbitmq_vhost_url")


@pytest.fixture
def client(broker_url: str) -> Iterator[Transport]:
    """A connection to ``broker_url`` for sending and collecting."""
    transport = create_transport(broker_url)
    transport.connect()
    yield transport
    transport.close()


@pytest.fixture
def start_service(broker_url: str) -> Iterator[Callable[..., ServiceRunner]]:
    """``start_service(service, url=None, middleware=(), **settings)``: run it on a thread
    until the test ends; ``middleware`` is added to the default middleware."""
    running: list[tuple[ServiceRunner, threading.Thread]] = []

    def start(
        service: Service,
        url: str | None = None,
        middleware: Sequence[Middleware] = (),
        **settings: object,
    ) -> ServiceRunner:
        runner = ServiceRunner(
            service,
            create_transport(url or broker_url),
            RunnerSettings(**settings),  # type: ignore[arg-type]
            [*default_middleware(), *middleware],
        )
        thread = threading.Thread(target=runner.run, name=f"test-{service.name}", daemon=True)
        thread.start()
        assert runner.started.wait(20), f"{service.name} did not start"
        running.append((runner, thread))
        return runner

    yield start
    for runner, thread in running:
        runner.request_stop()
        thread.join(20)
        assert not thread.is_alive(), f"{runner.service.name} did not stop"


@pytest.fixture
def sqlite_broker(tmp_path: Path) -> str:
    """A fresh embedded broker file for one test."""
    return f"sqlite:///{tmp_path}/broker.db"


def stop_group(process: subprocess.Popen) -> None:
    """Kill a process started with ``start_new_session`` and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _wait_until(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    """Poll state that announces itself nowhere (a process ending, an asynchronous
    settlement) until it holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.02)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(condition, what, timeout=20)``: see :func:`_wait_until`."""
    return _wait_until


@pytest.fixture
def supervised(
    sqlite_broker: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``supervised(service, *options, env=None, stderr=None)``: zocalo.service in its own
    process group (``stderr``: as for ``subprocess.Popen``).

    The test's own directory is on the service's PYTHONPATH, so a test can run
    services from a module beside it (``module:Class``). Stopped at teardown.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(
        service: str, *options: str, env: dict[str, str] | None = None, stderr: Any = None
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zocalo.cli.service",
                "-s",
                service,
                "--transport",
                sqlite_broker,
                *options,
            ],
            env=dict(os.environ, PYTHONPATH=str(request.path.parent), **(env or {})),
            start_new_session=True,
            stderr=stderr,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        stop_group(process)
