"""A second RabbitMQ node, with a TLS listener, for this session's tests.

It takes seconds to boot, so there is one per session; it is always stopped
(and its directory removed) at the end, and never touches the machine's node.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest
import requests
import trustme
from tls_node import SecondNode

from private_server import serving
from rabbit_broker import CREDENTIALS, MANAGEMENT


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The certificate authority the node's certificate comes from."""
    return trustme.CA(organization_name="zocalo tests")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory, tls_ca: trustme.CA) -> dict[str, Path]:
    """PEM files: ``ca``, the server's ``cert``/``key`` and a client's ``client_cert``/``..key``."""
    directory = tmp_path_factory.mktemp("tls")
    files = {
        name: directory / f"{name}.pem"
        for name in ("ca", "cert", "key", "client_cert", "client_key")
    }
    tls_ca.cert_pem.write_to_path(files["ca"])
    server = tls_ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(files["key"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(files["cert"], append=True)
    client = tls_ca.issue_cert("zocalo-test-client@localhost")
    client.private_key_pem.write_to_path(files["client_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    return files


@pytest.fixture(scope="session")
def tls_node(tls_files: dict[str, Path]) -> Iterator[SecondNode]:
    """A started :class:`SecondNode`: ``amqps_url``, ``amqp_url``, ``ca_path``, ``url(...)``."""
    node = SecondNode(certfile=tls_files["cert"], keyfile=tls_files["key"], cafile=tls_files["ca"])
    yield from serving(
        node,
        "tls_node",
        lambda started: (
            f"{started.node}: amqp {started.amqp_port}, amqps {started.tls_port}, "
            f"dist {started.dist_port}"
        ),
    )


@pytest.fixture
def operator(rabbitmq_vhost_url: str) -> Iterator[Any]:
    """A plain pika channel on the test vhost, to declare and inspect queues the way an
    operator's tooling would (not through our transport)."""
    parts = urlsplit(rabbitmq_vhost_url)
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            parts.hostname,
            parts.port,
            unquote(parts.path[1:]),
            pika.PlainCredentials("guest", "guest"),
        )
    )
    yield connection.channel()
    connection.close()


@pytest.fixture
def restricted_user(rabbitmq_vhost_url: str) -> Iterator[str]:
    """The URL of a user who may read and write in the test vhost but declare nothing."""
    vhost = requests.utils.quote(unquote(urlsplit(rabbitmq_vhost_url).path[1:]), safe="")
    name = f"zocalo-test-{uuid.uuid4().hex[:12]}"
    requests.put(
        f"{MANAGEMENT}/users/{name}",
        json={"password": "pw", "tags": ""},
        auth=CREDENTIALS,
        timeout=10,
    ).raise_for_status()
    try:
        requests.put(
            f"{MANAGEMENT}/permissions/{vhost}/{name}",
            json={"configure": "^$", "write": ".*", "read": ".*"},
            auth=CREDENTIALS,
            timeout=10,
        ).raise_for_status()
        yield rabbitmq_vhost_url.replace("guest:guest@", f"{name}:pw@", 1)
    finally:
        requests.delete(f"{MANAGEMENT}/users/{name}", auth=CREDENTIALS, timeout=10)
