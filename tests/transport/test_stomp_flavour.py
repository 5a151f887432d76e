"""Which broker the STOMP transport talks to, and what it claims there (:mod:`.flavour`).

The contract suite runs on both brokers (ids ``stomp`` and ``stomp-rabbitmq``); these
pin the wire decisions that differ and the detection itself.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from zocalo.errors import UnsupportedFeature
from zocalo.transport import Capability, Outgoing, create_transport
from zocalo.transport.stomp.flavour import ActiveMQ, RabbitMQ, flavour_of
from zocalo.transport.stomp.headers import from_stomp
from zocalo.transport.stomp.topology import DEAD_LETTER_QUEUES, routing_headers

RABBITMQ = RabbitMQ(DEAD_LETTER_QUEUES)


@pytest.mark.parametrize(
    ("server", "flavour"),
    [("ActiveMQ/5.17.6", ActiveMQ), ("RabbitMQ/3.10.8", RabbitMQ), ("", ActiveMQ)],
)
def test_the_connected_frames_server_header_names_the_flavour(server: str, flavour: type) -> None:
    assert type(flavour_of(server, DEAD_LETTER_QUEUES)) is flavour


def test_on_rabbitmq_every_frame_naming_a_queue_declares_it_alike() -> None:
    """A work queue dead-letters to its DLQ; the DLQ is a plain quorum queue; a topic
    carries no queue arguments (RabbitMQ would refuse a frame whose arguments differ)."""
    quorum = {"durable": "true", "auto-delete": "false", "x-queue-type": "quorum"}
    assert RABBITMQ.queue_arguments("/queue/zocalo.work") == {
        **quorum,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "DLQ.zocalo.work",
    }
    assert RABBITMQ.queue_arguments("/queue/DLQ.zocalo.work") == quorum
    assert RABBITMQ.queue_arguments("/topic/zocalo.status") == {}
    assert ActiveMQ().queue_arguments("/queue/zocalo.work") == {}


def test_on_rabbitmq_expiry_is_relative_and_deliveries_are_counted_by_the_queue() -> None:
    message = Outgoing("q", b"", expiration=1.5)
    assert routing_headers(message, RABBITMQ, now=1000.0) == {
        "persistent": "true",
        "expiration": "1500",
        "priority": "0",
    }
    assert routing_headers(message, now=1000.0)["expires"] == "1001500"  # ActiveMQ's
    assert RABBITMQ.deliveries({"redelivered": "true", "x-delivery-count": "3"}, 0) == 4
    assert RABBITMQ.deliveries({"redelivered": "false"}, 2) == 3  # a returned copy
    # RabbitMQ's queue arguments, as it hands them on with a message, are not headers of ours.
    assert from_stomp({"x-queue-type": "quorum", "x-delivery-count": "1", "k": "v"}) == {"k": "v"}


@pytest.mark.stomp
def test_on_rabbitmqs_stomp_plugin_the_transport_claims_what_it_can_honour(
    rabbitmq_stomp: Any,
) -> None:
    with create_transport(rabbitmq_stomp.url(prefix="flavour", vhost="/")) as transport:
        assert transport.flavour.name == "RabbitMQ"  # type: ignore[attr-defined]
        assert Capability.DELAY not in transport.capabilities
        assert Capability.PRIORITY not in transport.capabilities
        assert {Capability.DEAD_LETTER, Capability.DELIVERY_COUNT} <= transport.capabilities
        with pytest.raises(UnsupportedFeature, match="delay"):
            transport.send("flavour.q", b"x", delay=1.0)
        with pytest.raises(UnsupportedFeature, match="browse"):  # it would consume
            transport.browsed_queue_stats()  # type: ignore[attr-defined]
        with pytest.raises(UnsupportedFeature, match="reply queues"):
            transport.declare_reply_queue("zocalo.reply.flavour")


@pytest.mark.stomp
def test_on_activemq_the_transport_claims_delays_and_priorities(activemq: Any) -> None:
    with create_transport(activemq.url(prefix="flavour")) as transport:
        assert transport.flavour.name == "ActiveMQ"  # type: ignore[attr-defined]
        assert {Capability.DELAY, Capability.PRIORITY} <= transport.capabilities


@pytest.mark.stomp
@pytest.mark.rabbitmq
def test_the_private_stomp_node_leaves_the_machines_rabbitmq_as_it_was(
    rabbitmq_stomp: Any,
) -> None:
    """The STOMP plugin is enabled on the tests' own node only: the shared broker
    listens for no STOMP, and the private node is no member of its cluster."""
    from rabbit_broker import CREDENTIALS, MANAGEMENT, TIMEOUT

    overview = requests.get(f"{MANAGEMENT}/overview", auth=CREDENTIALS, timeout=TIMEOUT).json()
    assert "stomp" not in {listener["protocol"] for listener in overview["listeners"]}
    nodes = requests.get(f"{MANAGEMENT}/nodes", auth=CREDENTIALS, timeout=TIMEOUT).json()
    assert rabbitmq_stomp.node not in {node["name"] for node in nodes}
    assert rabbitmq_stomp.running
