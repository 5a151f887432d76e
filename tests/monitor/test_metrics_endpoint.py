"""Prometheus metrics served by a supervised service's worker, scraped over HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from two_step_jobs import send_two_step
from zocalo.monitor.metrics import ServiceMetrics
from zocalo.transport import create_transport


def samples(port: int) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` from one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(port: int, expected: dict[tuple[str, frozenset], float], timeout: float = 30):
    """Scrape (the server may not be up yet) until every expected sample has its value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = found = samples(port)
            if all(found.get(key) == value for key, value in expected.items()):
                return found
        except (urllib.error.URLError, ConnectionError) as error:
            last = error
        assert time.monotonic() < deadline, f"metrics never showed {expected}; last: {last}"
        threading.Event().wait(0.1)


def listening(port: int) -> set[str]:
    """The addresses on which some process of this machine listens on TCP ``port``."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                host, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(host)
                    # /proc prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(socket.inet_ntop(family, words))
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "address"),
    [((), "127.0.0.1"), (("--metrics-address", "0.0.0.0"), "0.0.0.0")],
    ids=["loopback-by-default", "opened"],
)
def test_the_metrics_port_listens_on_loopback_unless_opened(
    supervised, free_port, wait_until, options, address
):
    supervised("monitor_services:Echo", "--metrics-port", str(free_port), *options)
    wait_until(lambda: listening(free_port), "the metrics port to listen", timeout=30)
    assert listening(free_port) == {address}


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


@pytest.mark.slow
def test_counters_latency_and_in_flight_by_queue(supervised, broker_client, collector, free_port):
    supervised("monitor_services:Echo", "--metrics-port", str(free_port))
    out = collector(ack_with=broker_client)
    broker_client.subscribe("monitor.echo.out", out)
    # Before any message, the queue's series are there at zero.
    scrape_until(free_port, {key("zocalo_messages_total", queue="monitor.echo",
                                 outcome="handled"): 0})  # fmt: skip
    send_two_step(broker_client, "monitor.echo", [{"n": n} for n in range(5)])
    out.wait_for_count(5, timeout=30)
    found = scrape_until(
        free_port,
        {
            key("zocalo_messages_total", queue="monitor.echo", outcome="handled"): 5,
            key("zocalo_handler_seconds_count", queue="monitor.echo"): 5,
        },
    )
    assert found[key("zocalo_messages_total", queue="monitor.echo", outcome="retried")] == 0
    assert found[key("zocalo_messages_total", queue="monitor.echo", outcome="dead_lettered")] == 0
    assert found[key("zocalo_in_flight", queue="monitor.echo")] == 0
    assert found[key("zocalo_handler_seconds_bucket", queue="monitor.echo", le="+Inf")] == 5
    assert 0 < found[key("zocalo_handler_seconds_sum", queue="monitor.echo")] < 30


@pytest.mark.slow
def test_a_failing_handler_is_counted_retried_then_dead_lettered(
    supervised, broker_client, collector, free_port
):
    supervised("monitor_services:Broken", "--metrics-port", str(free_port))
    dead = collector(ack_with=broker_client)
    broker_client.subscribe("dlq.monitor.broken", dead)
    send_two_step(broker_client, "monitor.broken", [{"n": 1}])
    dead.wait_for_count(1, timeout=30)  # three attempts, 1 s and 2 s apart
    found = scrape_until(
        free_port,
        {
            key("zocalo_messages_total", queue="monitor.broken", outcome="retried"): 2,
            key("zocalo_messages_total", queue="monitor.broken", outcome="dead_lettered"): 1,
            key("zocalo_handler_seconds_count", queue="monitor.broken"): 3,
        },
    )
    assert found[key("zocalo_messages_total", queue="monitor.broken", outcome="handled")] == 0
    assert found[key("zocalo_in_flight", queue="monitor.broken")] == 0


def test_metrics_without_a_broker():
    metrics = ServiceMetrics()
    metrics.declare("q")
    metrics.started("q")
    assert metrics.registry.get_sample_value("zocalo_in_flight", {"queue": "q"}) == 1
    metrics.finished("q", "handled", 0.02)
    value = metrics.registry.get_sample_value
    assert value("zocalo_in_flight", {"queue": "q"}) == 0
    assert value("zocalo_messages_total", {"queue": "q", "outcome": "handled"}) == 1
    assert value("zocalo_messages_total", {"queue": "q", "outcome": "failed"}) == 0
    assert value("zocalo_handler_seconds_count", {"queue": "q"}) == 1
    # a private registry: two services in one process do not collide
    ServiceMetrics().declare("q")


def test_in_flight_while_a_handler_runs(each_transport_url, start_service, collector, wait_until):
    """On each transport: the runner's hooks fire on its own thread (memory) and on the
    transport's callback thread (sqlite, RabbitMQ) alike."""
    from zocalo.service import Service

    release = threading.Event()
    entered = threading.Event()
    queue = f"metrics.held.{uuid.uuid4().hex[:10]}"

    class Held(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(queue, self.hold)

        def hold(self, step, payload):
            entered.set()
            release.wait(10)
            step.send(payload)

    metrics = ServiceMetrics()
    with create_transport(each_transport_url) as client:
        for name in (queue, f"{queue}.out"):
            client.declare_queue(name)
        start_service(Held(), each_transport_url, middleware=[metrics])
        out = collector(ack_with=client)
        client.subscribe(f"{queue}.out", out)
        send_two_step(client, queue, [{"n": 1}])
        assert entered.wait(5)
        value = metrics.registry.get_sample_value
        assert value("zocalo_in_flight", {"queue": queue}) == 1
        release.set()
        out.wait_for_count(1)
        wait_until(
            lambda: value("zocalo_messages_total", {"queue": queue, "outcome": "handled"}) == 1,
            "the message counted as handled",
            timeout=5,
        )
        assert value("zocalo_in_flight", {"queue": queue}) == 0


def test_a_port_in_use_leaves_the_service_running_without_metrics(caplog, free_port):
    import socket

    from zocalo.monitor.metrics import enable_metrics
    from zocalo.service import Service, ServiceRunner, handler
    from zocalo.transport import create_transport

    class Quiet(Service):
        @handler("quiet")
        def nothing(self, step, payload):
            pass

    runner = ServiceRunner(Quiet(), create_transport("memory://metrics-port-in-use"))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", free_port))
        taken.listen()
        assert enable_metrics(runner, free_port) is None
    assert "cannot serve metrics" in caplog.text
