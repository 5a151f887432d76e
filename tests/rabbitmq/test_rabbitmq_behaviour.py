"""RabbitMQ beyond the contract: compatibility, refused outputs, reconnects, delays."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests

from zocalo.errors import ConnectionFailed
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, ServiceRunner
from zocalo.transport import create_transport

pytestmark = pytest.mark.rabbitmq
HERE = Path(__file__).parent


@pytest.fixture
def amqp(rabbitmq_vhost_url: str):
    """A connected transport on the session's private vhost."""
    with create_transport(rabbitmq_vhost_url) as transport:
        yield transport


def unique(label: str) -> str:
    return f"behaviour.{label}.{uuid.uuid4().hex[:8]}"


def start_recipe(transport, recipe: Recipe, payloads) -> None:
    outputs = []
    for payload in payloads:
        step = RecipeStep()
        step.start(Recipe({**recipe.to_dict(), "start": [[1, payload]]}))
        outputs += step.outputs
    transport.publish(outputs).result(30)


class Forward(Service):
    """Forwards along the recipe; its queue is set per test."""

    def __init__(self, queue: str, prefetch: int = 10) -> None:
        super().__init__()
        self.add_handler(queue, self.forward, prefetch=prefetch)

    def forward(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


@pytest.fixture
def run_service(rabbitmq_vhost_url: str, start_service: Callable[..., ServiceRunner]):
    """``run_service(service, url=None)``: ``start_service`` on RabbitMQ, retrying after 0.05 s."""
    return lambda service, url=None: start_service(
        service, url or rabbitmq_vhost_url, retry_delay=0.05
    )


def test_a_recipe_goes_ours_theirs_ours_through_a_workflows_frontend(
    amqp, rabbitmq_vhost_url, run_service, collector, operator
):
    # The reference expects the topology an operator declares (COMPAT 8): its frontend
    # broadcasts status to the transient.status fanout exchange and fails without it.
    for exchange in ("transient.status", "command"):
        operator.exchange_declare(exchange, "fanout", durable=True)
    first, theirs, last = unique("ours1"), unique("theirs"), unique("ours2")
    for queue in (first, theirs, last, f"{last}.end"):
        amqp.declare_queue(queue)
    run_service(Forward(first))
    run_service(Forward(last))
    parts = urlsplit(rabbitmq_vhost_url)
    frontend = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "theirs.py"),
            parts.hostname,
            str(parts.port),
            unquote(parts.path[1:]),
            theirs,
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        end = collector(ack_with=amqp)
        amqp.subscribe(f"{last}.end", end)
        recipe = Recipe(
            {
                "1": {"service": "ours", "queue": first, "output": 2},
                "2": {"service": "theirs (python-workflows)", "queue": theirs, "output": 3},
                "3": {"service": "ours", "queue": last, "output": 4},
                "4": {"service": "end", "queue": f"{last}.end"},
                "start": [[1, {}]],
            }
        )
        step = RecipeStep()
        step.start(recipe, environment={"ID": "interop-1", "beamline": "i03"})
        amqp.publish(step.outputs).result(10)
        (delivery,) = end.wait_for_count(1, timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(frontend.pid, signal.SIGKILL)
        frontend.wait(10)
    body = json.loads(delivery.body)
    assert body["payload"] == {"hops": 1}, "their service forwarded it exactly once"
    assert body["recipe-path"] == [1, 2, 3]
    assert body["recipe-pointer"] == 4
    assert body["environment"] == {"ID": "interop-1", "beamline": "i03"}
    assert Recipe(body["recipe"]) == recipe
    assert delivery.headers["workflows-recipe"] is True


def test_output_to_a_queue_that_does_not_exist_is_not_acked_and_named(
    amqp, run_service, collector, caplog
):
    source, missing = unique("src"), unique("missing")
    runner = run_service(Forward(source))
    recipe = Recipe(
        {"1": {"queue": source, "output": 2}, "2": {"queue": missing}, "start": [[1, {}]]}
    )
    start_recipe(amqp, recipe, [{"n": 1}])
    dead = collector(ack_with=amqp)
    amqp.subscribe(f"dlq.{source}", dead)
    (letter,) = dead.wait_for_count(1, timeout=60)
    assert json.loads(letter.body)["payload"] == {"n": 1}, "never acked: the broker's limit"
    assert runner.stats.snapshot()["publish_failed"] >= amqp.delivery_limit
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(missing in line and "NO_ROUTE" in line for line in errors), errors


def test_output_refused_by_a_full_queue_is_not_acked_and_named(
    amqp, run_service, operator, collector, caplog
):
    source, full = unique("src"), unique("full")
    operator.queue_declare(
        full, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    operator.basic_publish("", full, b"occupying the only place")
    runner = run_service(Forward(source))
    recipe = Recipe({"1": {"queue": source, "output": 2}, "2": {"queue": full}, "start": [[1, {}]]})
    start_recipe(amqp, recipe, [{"n": 2}])
    dead = collector(ack_with=amqp)
    amqp.subscribe(f"dlq.{source}", dead)
    dead.wait_for_count(1, timeout=60)
    assert runner.stats.snapshot()["handled"] >= 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(full in line and "refused" in line for line in errors), errors


def test_an_operators_queue_with_other_arguments_is_used_as_it_is(amqp, operator, collector):
    queue = unique("operator")
    operator.queue_declare(
        queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"dlq.{queue}",
            "x-single-active-consumer": True,
        },
    )
    received = collector(ack_with=amqp)
    amqp.subscribe(queue, received)  # no PRECONDITION_FAILED
    amqp.send(queue, b"hello")
    assert received.wait_for_count(1)[0].body == b"hello"


def test_a_delayed_message_arrives_after_its_sender_exited(rabbitmq_vhost_url, amqp, collector):
    queue = unique("later")
    amqp.declare_queue(queue)
    script = (
        "import sys; from zocalo.transport import create_transport\n"
        "with create_transport(sys.argv[1]) as t: t.send(sys.argv[2], b'later', delay=1.5)\n"
    )
    sent_at = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", script, rabbitmq_vhost_url, queue], check=True, timeout=60
    )
    received = collector(ack_with=amqp)
    amqp.subscribe(queue, received)
    (delivery,) = received.wait_for_count(1, timeout=30)
    assert delivery.body == b"later"
    assert time.monotonic() - sent_at >= 1.5


def _close_connection_named(name: str) -> None:
    """Close one client's connection from the broker side (never anyone else's)."""
    api = "http://127.0.0.1:15672/api/connections"
    deadline = time.monotonic() + 30
    pause = threading.Event()
    while True:  # the management database learns of new connections a few seconds late
        connections = requests.get(api, auth=("guest", "guest"), timeout=10).json()
        ours = [
            c["name"]
            for c in connections
            if (c.get("client_properties") or {}).get("connection_name") == name
        ]
        if ours or time.monotonic() > deadline:
            break
        pause.wait(0.25)
    assert len(ours) == 1, f"expected one connection named {name}, found {ours}"
    response = requests.delete(
        f"{api}/{quote(ours[0], safe='')}",
        auth=("guest", "guest"),
        headers={"X-Reason": "test: broker-side close"},
        timeout=10,
    )
    assert response.status_code == 204, response.text


def test_reconnects_and_loses_nothing_when_the_broker_drops_the_connection(
    rabbitmq_vhost_url, amqp, run_service, collector, caplog
):
    source = unique("stream")
    name = unique("conn")
    prefetch = 10
    runner = run_service(
        Forward(source, prefetch=prefetch), url=f"{rabbitmq_vhost_url}?connection_name={name}"
    )
    listener = collector()
    news = unique("news")
    runner.transport.subscribe_broadcast(news, listener)  # must be restored too
    out = collector(ack_with=amqp)
    amqp.subscribe(f"{source}.out", out, prefetch=500)
    recipe = Recipe(
        {"1": {"queue": source, "output": 2}, "2": {"queue": f"{source}.out"}, "start": [[1, {}]]}
    )
    total = 1000
    start_recipe(amqp, recipe, [{"n": n} for n in range(total)])
    out.wait_for_count(100)
    _close_connection_named(name)
    duplicates = out.wait_for_every_number(total, "the reconnect")
    print(f"\nreconnect: {total} messages, {duplicates} duplicates (prefetch {prefetch})")
    assert duplicates <= prefetch
    # Every message may be through before the client even hears of the close: wait
    # for the reconnect itself, then until it has restored the subscriptions.
    deadline = time.monotonic() + 30
    while not (
        any("reconnected to" in record.getMessage() for record in caplog.records)
        and runner.transport.connected
    ):
        assert time.monotonic() < deadline, "never reconnected"
        threading.Event().wait(0.05)
    amqp.broadcast(news, b"after the reconnect")
    assert listener.wait_for_count(1)[0].body == b"after the reconnect"


def test_status_and_shutdown_commands_cross_rabbitmq(rabbitmq_vhost_url, amqp, collector):
    from click.testing import CliRunner

    from zocalo.cli.shutdown import command as shutdown

    statuses = collector()
    amqp.subscribe_broadcast("transient.status", statuses)
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "fleet_services:Passthrough",
            "--transport",
            rabbitmq_vhost_url,
        ],
        env=dict(os.environ, PYTHONPATH=str(HERE.parent / "service")),
        start_new_session=True,
    )
    try:
        idle = statuses.wait_until(
            lambda ds: any(json.loads(d.body).get("statustext") == "idle" for d in ds),
            "an idle status broadcast",
            timeout=60,
        )
        assert json.loads(idle[-1].body)["serviceclass"] == "Passthrough"
        result = CliRunner().invoke(
            shutdown, ["-s", "Passthrough", "--transport", rabbitmq_vhost_url]
        )
        assert result.exit_code == 0, result.output
        assert service.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)
        service.wait(10)


def test_a_cluster_url_fails_over_to_the_next_node(rabbitmq_vhost_url, collector):
    parts = urlsplit(rabbitmq_vhost_url)
    with socket.socket() as probe:  # a port nobody listens on: a node that is down
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    url = f"amqp://guest:guest@127.0.0.1:{dead}{parts.path}?hosts={parts.hostname}:{parts.port}"
    with create_transport(url) as transport:
        queue = unique("failover")
        received = collector(ack_with=transport)
        transport.subscribe(queue, received)
        transport.send(queue, b"via the second node")
        assert received.wait_for_count(1)[0].body == b"via the second node"
    with pytest.raises(ConnectionFailed) as refused:
        create_transport(f"amqp://guest:guest@127.0.0.1:{dead}/?hosts=127.0.0.1:{dead}").connect()
    assert str(refused.value).count(f"node 127.0.0.1:{dead}") == 2, "each node named"


def test_queues_we_declare_dead_letter_at_least_once(rabbitmq_vhost_url, amqp):
    queue = unique("declared")
    amqp.declare_queue(queue)
    vhost = quote(unquote(urlsplit(rabbitmq_vhost_url).path[1:]), safe="")
    info = requests.get(
        f"http://127.0.0.1:15672/api/queues/{vhost}/{quote(queue, safe='')}",
        auth=("guest", "guest"),
        timeout=10,
    ).json()
    assert info["arguments"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"dlq.{queue}",
        "x-delivery-limit": amqp.delivery_limit - 1,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
