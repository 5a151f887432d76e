"""TLS (``amqps://``) against the session's second RabbitMQ node (``tls_node``).

The node is our own (see ``tls_node.py``): its certificate comes from a
``trustme`` CA, and the failure tests (untrusted CA, plaintext to the TLS port,
bad credentials, missing vhost, wrong port) run against it too, so nothing
here touches the machine's broker. A third node (``strict_node``) checks what
the second lets pass: its certificate names only one of the names it is
reached by, and it requires a client certificate. Nothing sleeps to wait for a delivery:
``collector`` waits on a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import trustme
from tls_node import SecondNode, free_port

from zocalo.errors import ConnectionFailed, ZocaloError
from zocalo.transport import Outgoing, Transport, create_transport
from zocalo.transport.rabbitmq.url import connection_parameters

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

#: Seconds to wait for what should happen promptly (waits end as soon as it does).
DEADLINE = 5.0
#: A refused connection must fail this fast, not after the socket timeout.
FAILS_WITHIN = 5.0


@pytest.fixture
def connect(tls_node: SecondNode) -> Iterator[Callable[..., Transport]]:
    """``connect(url=None)``: a connected transport (default: the node's amqps URL)."""
    opened: list[Transport] = []

    def open_connection(url: str | None = None) -> Transport:
        transport = create_transport(url or tls_node.amqps_url)
        transport.connect()
        opened.append(transport)
        return transport

    yield open_connection
    for transport in reversed(opened):
        transport.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    prefix = f"tls.{request.node.originalname}.{uuid.uuid4().hex[:8]}"
    return lambda label: f"{prefix}.{label}"


def refused(url: str) -> ConnectionFailed:
    """The ConnectionFailed that connecting to ``url`` raises (promptly)."""
    transport = create_transport(url)
    began = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed) as failure:
            transport.connect()
    finally:
        if transport.connected:  # wrongly accepted: not left reconnecting after the test
            transport.close()
    assert time.monotonic() - began < FAILS_WITHIN, "a refused connection should fail at once"
    assert not transport.connected
    message = str(failure.value)
    assert ":guest@" not in message, f"password not redacted: {message}"
    return failure.value


# -- a round trip over TLS ------------------------------------------------------


def test_urls_point_at_the_second_node(tls_node: SecondNode) -> None:
    assert tls_node.amqps_url.startswith(f"amqps://guest:guest@127.0.0.1:{tls_node.tls_port}/")
    assert f"cafile={tls_node.ca_path}" in tls_node.amqps_url
    assert tls_node.amqp_url.startswith(f"amqp://guest:guest@127.0.0.1:{tls_node.amqp_port}/")
    assert 5672 not in (tls_node.amqp_port, tls_node.tls_port)
    assert tls_node.beam_pids(), "the node's beam.smp should be running"


def test_round_trip_over_tls(
    connect: Callable[..., Transport], collector: Callable, name: Callable[[str], str]
) -> None:
    """send, subscribe, ack, publish-with-ack and broadcast, all over amqps."""
    producer, worker = connect(), connect()
    assert producer.connected
    inbox, outbox, topic = name("in"), name("out"), name("topic")
    for queue in (inbox, outbox):
        producer.declare_queue(queue)

    # send -> subscribe -> ack, headers intact
    headers = {"recipe-pointer": 1, "unicode": "Zócalo ✓", "nested": {"ids": [1, 2, 3]}}
    producer.send(inbox, b"first", headers=headers)
    producer.send(inbox, bytes(range(256)))
    received = collector()
    work = worker.subscribe(inbox, received, prefetch=2)
    first, binary = received.wait_for_count(2)
    assert first.body == b"first"
    assert binary.body == bytes(range(256))
    for key, value in headers.items():
        assert first.headers[key] == value
    assert first.ackable
    assert first.delivery_count == 1
    worker.ack(binary)

    # publish-with-ack: the output is confirmed, then the input acked
    confirmation = worker.publish([Outgoing(outbox, b"result")], ack=first)
    confirmation.result(DEADLINE)
    results = collector(ack_with=producer)
    producer.subscribe(outbox, results)
    [result] = results.wait_for_count(1)
    assert result.body == b"result"

    # broadcast: every subscriber gets a copy
    listeners = [collector(), collector()]
    for transport, listener in zip((producer, worker), listeners, strict=True):
        transport.subscribe_broadcast(topic, listener)
    producer.broadcast(topic, b"to everyone")
    for listener in listeners:
        [copy] = listener.wait_for_count(1)
        assert copy.body == b"to everyone"
        assert not copy.ackable

    # nothing was left unacknowledged: a new consumer on the inbox sees only a sentinel
    worker.unsubscribe(work)
    producer.send(inbox, b"--sentinel--")
    leftovers = collector(ack_with=producer)
    producer.subscribe(inbox, leftovers, prefetch=10)
    deliveries = leftovers.wait_for_body(b"--sentinel--")
    assert [delivery.body for delivery in deliveries] == [b"--sentinel--"]


@pytest.fixture(scope="module")
def strict_node(
    tls_ca: trustme.CA, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecondNode]:
    """A further TLS node that checks everything: its own certificate names ``localhost``
    only (not 127.0.0.1, where it listens too), and it refuses a client that presents no
    certificate from the tests' CA (see :func:`client_certificate`)."""
    directory = tmp_path_factory.mktemp("tls-strict")
    certificate = tls_ca.issue_cert("localhost")
    certificate.private_key_pem.write_to_path(directory / "key.pem")
    certificate.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    node = SecondNode(
        certfile=directory / "cert.pem",
        keyfile=directory / "key.pem",
        cafile=tls_files["ca"],
        require_client_certificate=True,
        name=f"zocalo-tls-strict-{os.getpid()}",
    )
    try:
        node.start()
        yield node
    finally:
        node.destroy()


@pytest.fixture
def client_certificate(tls_files: dict[str, Path]) -> dict[str, str]:
    """URL options presenting the client certificate the tests' CA issued."""
    return {"certfile": str(tls_files["client_cert"]), "keyfile": str(tls_files["client_key"])}


def round_trip(transport: Transport, queue: str, collector: Callable) -> None:
    """Declare ``queue``, send to it and receive what was sent, on ``transport``."""
    transport.declare_queue(queue)
    transport.send(queue, b"round trip")
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    assert received.wait_for_count(1)[0].body == b"round trip"


def test_the_certificate_is_checked_against_the_name_connected_to(
    strict_node: SecondNode,
    client_certificate: dict[str, str],
    connect: Callable[..., Transport],
    collector: Callable,
    name: Callable[[str], str],
) -> None:
    """One listener, two names for it: under the name its certificate carries
    (``localhost``) the node is reached; under one it does not (``127.0.0.1``) the
    client refuses it, for the name and nothing else."""
    message = str(refused(strict_node.url(host="127.0.0.1", **client_certificate)))
    assert re.search(r"mismatch|not valid for '127\.0\.0\.1'", message), message
    transport = connect(strict_node.url(host="localhost", **client_certificate))
    round_trip(transport, name("q"), collector)


def test_each_cluster_node_is_checked_against_its_own_name(
    strict_node: SecondNode,
    client_certificate: dict[str, str],
    connect: Callable[..., Transport],
    collector: Callable,
    name: Callable[[str], str],
) -> None:
    """A cluster URL whose first node (by IP) is down: the client fails over to the
    second, and checks that node's certificate against that node's name (``localhost``).

    Regression: every node was checked against the first node's name, so a cluster
    with per-node certificates could only ever reach its first node.
    """
    node = strict_node
    # Its certificate really is its own: under the first node's name it is refused.
    refused(node.url(host="127.0.0.1", **client_certificate))
    down = free_port()
    transport = connect(
        node.url(
            host="127.0.0.1", port=down, hosts=f"localhost:{node.tls_port}", **client_certificate
        )
    )
    assert (transport.parameters.host, transport.parameters.port) == ("localhost", node.tls_port)
    round_trip(transport, name("q"), collector)


def test_client_certificate(
    strict_node: SecondNode,
    client_certificate: dict[str, str],
    connect: Callable[..., Transport],
    collector: Callable,
    name: Callable[[str], str],
) -> None:
    """``certfile``/``keyfile`` present a client certificate, which a node that
    requires one accepts (see the next two tests: it does refuse without)."""
    transport = connect(strict_node.url(host="localhost", **client_certificate))
    round_trip(transport, name("q"), collector)


def test_no_client_certificate_is_refused_where_one_is_required(strict_node: SecondNode) -> None:
    refused(strict_node.url(host="localhost"))


def test_client_certificate_from_a_foreign_ca_is_refused(
    strict_node: SecondNode, tmp_path: Path
) -> None:
    stranger = trustme.CA().issue_cert("stranger@localhost")
    stranger.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    stranger.private_key_pem.write_to_path(tmp_path / "key.pem")
    stranger_files = {"certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "key.pem")}
    refused(strict_node.url(host="localhost", **stranger_files))


# -- failures are clear ConnectionFailed errors -----------------------------------


def test_untrusted_ca_fails(tls_node: SecondNode, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(other)
    refused(tls_node.url(cafile=str(other)))


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_untrusted_ca_names_tls_and_the_certificate(
    tls_node: SecondNode, tmp_path: Path, trust: str
) -> None:
    if trust == "another CA":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(other)
        url = tls_node.url(cafile=str(other))
    else:
        url = tls_node.url(cafile="")  # no cafile: the system's CAs, which do not know ours
    message = str(refused(url))
    assert re.search(r"certificate|TLS|SSL", message), message
    assert re.search(r"verif|trust", message, re.IGNORECASE), message


def test_plaintext_to_the_tls_port_fails_clearly(tls_node: SecondNode) -> None:
    error = refused(tls_node.url(tls=False, port=tls_node.tls_port))
    message = str(error)
    assert f":{tls_node.tls_port}/" in message, message
    assert re.search(r"protocol|reset|lost", message, re.IGNORECASE), message


def test_tls_to_the_plaintext_port_fails(tls_node: SecondNode) -> None:
    error = refused(tls_node.url(tls=True, port=tls_node.amqp_port))
    assert f":{tls_node.amqp_port}/" in str(error)


def test_wrong_password_names_the_credentials(tls_node: SecondNode) -> None:
    message = str(refused(tls_node.url(password="not-the-password")))
    assert "credentials" in message, message
    assert "not-the-password" not in message, message


def test_missing_vhost_is_named(tls_node: SecondNode) -> None:
    vhost = f"no-such-vhost-{uuid.uuid4().hex[:6]}"
    message = str(refused(tls_node.url(vhost=vhost)))
    assert repr(vhost) in message, message
    assert "virtual host" in message, message


@pytest.mark.parametrize("tls", [True, False], ids=["amqps", "amqp"])
def test_wrong_port_fails(tls_node: SecondNode, tls: bool) -> None:
    port = free_port()  # nothing listens there
    message = str(refused(tls_node.url(tls=tls, port=port)))
    assert f":{port}/" in message, message


def test_plain_amqp_on_the_second_node_still_works(
    tls_node: SecondNode, connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    transport = connect(tls_node.amqp_url)
    queue = name("q")
    transport.declare_queue(queue)
    transport.send(queue, b"plain")
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    assert received.wait_for_count(1)[0].body == b"plain"


# -- the node as a fault injector (last: it restarts the session's node) ----------


def test_close_connections_cuts_clients_off(tls_node: SecondNode) -> None:
    """``close_connections()`` closes every client connection to the node (and only there)."""
    (parameters,), _ = connection_parameters(tls_node.amqps_url)
    connection = pika.BlockingConnection(parameters)
    try:
        tls_node.close_connections("test_rabbitmq_tls: fault injection")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.process_data_events(time_limit=DEADLINE)
        assert closed.value.reply_code == 320  # CONNECTION_FORCED
    finally:
        if connection.is_open:
            connection.close()


def test_a_connection_the_broker_closed_never_hangs_a_send(
    tls_node: SecondNode, name: Callable[[str], str]
) -> None:
    """After the cut a send either works (the transport reconnected) or fails with a
    ZocaloError; it must not hang until its timeout.

    Regression: reopening the publishing channel on the closed connection used to
    kill the transport's I/O thread, so every later call hung.
    """
    queue = name("q")
    transport = create_transport(tls_node.amqps_url)
    transport.connect()
    try:
        transport.declare_queue(queue)
        tls_node.close_connections("test_rabbitmq_tls: fault injection")
        with contextlib.suppress(ZocaloError):
            transport.send(queue, b"after the cut", timeout=DEADLINE)
    finally:
        transport.close()


def test_restart_keeps_durable_messages(
    tls_node: SecondNode, collector: Callable, name: Callable[[str], str]
) -> None:
    """``stop()`` then ``start()`` is a broker restart: the data directory is kept."""
    queue = name("durable")
    with create_transport(tls_node.amqps_url) as transport:
        transport.declare_queue(queue)
        transport.send(queue, b"survives a restart")

    tls_node.stop()
    assert not tls_node.beam_pids()
    refused(tls_node.amqps_url)
    seconds = tls_node.start()
    print(f"\n[tls_node] restarted in {seconds:.1f}s")

    with create_transport(tls_node.amqps_url) as transport:
        received = collector(ack_with=transport)
        transport.subscribe(queue, received)
        [delivery] = received.wait_for_count(1)
        assert delivery.body == b"survives a restart"
