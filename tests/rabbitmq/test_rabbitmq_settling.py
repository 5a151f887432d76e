"""Every input is settled once, by whoever holds it, whatever happens to a channel.

A publish that can never be confirmed gives its inputs back; a delivery whose
channel closed before its turn is not handled (the broker hands it to someone
else); a message without an id gets the same id on every delivery; the
delayed-message plugin's exchange is not asked to route at publish time.
"""

from __future__ import annotations

import threading
import uuid
from urllib.parse import unquote, urlsplit

import pika
import pytest

from rabbit_broker import PrivateVhost
from zocalo.errors import PublishFailed, TransportError
from zocalo.transport import Outgoing, create_transport
from zocalo.transport.base import Delivery
from zocalo.transport.rabbitmq.topology import PLUGIN_DELAY_EXCHANGE, mandatory

pytestmark = pytest.mark.rabbitmq


def unique(label: str) -> str:
    return f"settling.{label}.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def amqp(rabbitmq_vhost_url: str):
    with create_transport(rabbitmq_vhost_url) as transport:
        yield transport


def test_inputs_of_a_publish_lost_with_its_channel_are_given_back(
    amqp, operator, collector, wait_until
):
    """The publishing channel closes under unconfirmed batches (here: a broadcast to an
    exchange deleted behind the transport's back). Their inputs must be settleable
    again, or the consumer's prefetch fills with inputs nobody can settle."""
    source, topic = unique("src"), unique("topic")
    inputs = collector()
    amqp.subscribe(source, inputs, prefetch=1)
    amqp.publish([Outgoing(topic, b"declares the exchange", broadcast=True)]).result(30)
    amqp.publish([Outgoing(source, b"input")]).result(30)
    (delivery,) = inputs.wait_for_count(1)

    operator.exchange_delete(topic)  # the transport still thinks it exists
    confirmation = amqp.publish([Outgoing(topic, b"output", broadcast=True)], ack=delivery)
    with pytest.raises(PublishFailed, match="publishing channel closed"):
        confirmation.result(30)

    amqp.nack(delivery)  # given back: refused as "not awaiting acknowledgement" before
    again = inputs.wait_for_count(2)[1]
    assert again.body == b"input" and again.redelivered
    amqp.ack(again)
    wait_until(lambda: published(amqp, Outgoing(source, b"next")), "the channel to reopen")
    assert inputs.wait_for_count(3)[2].body == b"next", "the consumer stopped receiving"


def published(transport, message: Outgoing) -> bool:
    """Whether ``message`` was published (not: the publishing channel was not open yet)."""
    try:
        transport.publish([message]).result(30)
    except PublishFailed as error:
        if "not open" in str(error):
            return False
        raise
    return True


def test_a_fanout_exchange_that_cannot_be_declared_is_refused_every_time(restricted_user):
    topic = unique("topic")
    with create_transport(restricted_user) as transport:
        for _ in range(2):  # the refusal is not remembered as a declared exchange
            with pytest.raises(TransportError, match=f"cannot declare exchange '{topic}'"):
                transport.publish([Outgoing(topic, b"x", broadcast=True)])


def test_deliveries_whose_channel_closed_before_their_turn_are_not_handled(
    amqp, rabbitmq_vhost_url, collector, wait_until
):
    """The broker redelivers what a closed channel held: handling the stale copy as
    well would process each of those messages twice."""
    source, marker_queue = unique("src"), unique("marker")
    handled: list[Delivery] = []
    release = threading.Event()

    def slow(delivery: Delivery) -> None:
        handled.append(delivery)
        release.wait(30)  # the rest wait for the callback thread meanwhile

    amqp.subscribe(source, slow, prefetch=5)
    markers = collector(ack_with=amqp)
    amqp.subscribe(marker_queue, markers)
    amqp.publish([Outgoing(source, f"{n}".encode()) for n in range(3)]).result(30)
    wait_until(lambda: handled, "the first delivery")
    channel = handled[0].receipt[0]
    amqp._connection.soon(channel.close)
    wait_until(lambda: not channel.is_open, "the consumer's channel to close")
    amqp.publish([Outgoing(marker_queue, b"after")]).result(30)  # queued behind the others
    release.set()

    markers.wait_for_count(1)
    assert [d.body for d in handled] == [b"0"]
    with create_transport(rabbitmq_vhost_url) as other:
        elsewhere = collector(ack_with=other)
        other.subscribe(source, elsewhere, prefetch=5)
        assert sorted(d.body for d in elsewhere.wait_for_count(3)) == [b"0", b"1", b"2"]


def test_a_message_without_an_id_has_the_same_id_on_every_delivery(amqp, operator, collector):
    """python-workflows publishes no message_id; services keep ids as identities."""
    source = unique("src")
    amqp.declare_queue(source)
    headers = pika.BasicProperties(headers={"workflows-recipe": "yes", "n": 1})
    operator.basic_publish("", source, b"one", headers)
    operator.basic_publish("", source, b"two", headers)
    received = collector()
    amqp.subscribe(source, received, prefetch=2)
    one, two = received.wait_for_count(2)
    assert one.message_id != two.message_id
    assert one.message_id.startswith("sha256:")

    amqp.nack(one)
    again = received.wait_for_count(3)[2]
    assert again.body == b"one" and again.delivery_count == 2
    assert again.message_id == one.message_id


def test_a_dead_letter_copy_unconfirmed_at_close_leaves_no_traceback(
    rabbitmq_vhost_url, collector, caplog, wait_until
):
    """Closing fails the copy's confirmation; settling the original then has no
    connection to go to, and needs none: the broker returns it."""
    source = unique("src")
    with create_transport(rabbitmq_vhost_url) as transport:
        received = collector()
        transport.subscribe(source, received)
        transport.publish([Outgoing(source, b"doomed")]).result(30)
        (delivery,) = received.wait_for_count(1)

        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(30)

        transport._connection.soon(hold)  # the I/O thread waits: the copy goes after it
        assert held.wait(30)
        transport.nack(delivery, requeue=False, reason="test")
        closer = threading.Thread(target=transport.close)
        closer.start()  # closed while the copy is not even published
        wait_until(lambda: not transport._connection.is_open, "the close to begin")
        release.set()
        closer.join(30)
    tracebacks = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert not tracebacks, tracebacks[0].getMessage()
    with create_transport(rabbitmq_vhost_url) as other:
        returned = collector(ack_with=other)
        other.subscribe(source, returned)
        assert returned.wait_for_count(1)[0].body == b"doomed"


def test_the_delay_plugins_exchange_is_not_asked_to_route_at_publish_time():
    """The plugin's exchange stores a delayed message and routes it later: asked with
    ``mandatory`` it answers 312 NO_ROUTE although it keeps the message."""
    delayed = Outgoing("q", b"x", delay=5)
    assert not mandatory(delayed, (PLUGIN_DELAY_EXCHANGE, "q", {"x-delay": 5000}))
    assert mandatory(Outgoing("q", b"x"), ("", "q", {}))
    assert not mandatory(Outgoing("t", b"x", broadcast=True), ("t", "", {}))


def test_a_delayed_message_through_an_exchange_that_routes_later_is_confirmed():
    """An exchange named like the plugin's that routes nothing now, as the plugin's does
    not at publish time (a private vhost: every other test there takes that route)."""
    with PrivateVhost(f"zocalo-test-plugin-{uuid.uuid4().hex[:8]}") as vhost:
        parts = urlsplit(vhost.url)
        operator = pika.BlockingConnection(
            pika.ConnectionParameters(
                parts.hostname,
                parts.port,
                unquote(parts.path[1:]),
                pika.PlainCredentials("guest", "guest"),
            )
        )
        try:
            operator.channel().exchange_declare(PLUGIN_DELAY_EXCHANGE, "direct", durable=True)
        finally:
            operator.close()
        target = unique("delayed")
        with create_transport(vhost.url) as transport:
            transport.declare_queue(target)
            transport.publish([Outgoing(target, b"later", delay=5)]).result(30)
