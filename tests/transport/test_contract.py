"""The transport contract, run against every transport in ``conftest.TRANSPORTS``.

Only the public API is used: ``create_transport``, ``Transport``, ``Delivery``,
``Outgoing``, ``Capability``, ``Confirmation``, ``QueueStats`` and ``dlq_name``. A transport
that lacks an optional capability must *refuse* the feature with
``UnsupportedFeature``; these tests check that refusal instead of skipping.

Nothing here sleeps to wait for a delivery: see ``conftest.py``. To show that
nothing else is in a queue, a sentinel is sent last and read up to (FIFO).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from zocalo.errors import InvalidURL, UnsupportedFeature, ZocaloError
from zocalo.transport import (
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    Subscription,
    Transport,
    create_transport,
    dlq_name,
    reply_queue_name,
)
from zocalo.transport.base import (  # not (yet) re-exported by zocalo.transport
    DLQ_HISTORY_HEADER,
    DLQ_QUEUE_HEADER,
    DLQ_REASON_HEADER,
    QueueStats,
)
from zocalo.transport.dead_letters import entry_seconds

SENTINEL = b"--sentinel--"

#: Seconds to wait for what should happen promptly (waits end as soon as it does).
DEADLINE = 5.0

#: Tolerance when comparing our clock with the broker's for "no earlier than".
CLOCK_SLACK = 0.005


# -- helpers --------------------------------------------------------------------


def drain(transport: Transport, queue: str, collector: Callable[..., Any]) -> list[bytes]:
    """The bodies waiting in ``queue`` (now acknowledged), read up to a sentinel sent last."""
    transport.send(queue, SENTINEL)
    received = collector(ack_with=transport)
    subscription = transport.subscribe(queue, received, prefetch=10)
    deliveries = received.wait_for_body(SENTINEL)
    transport.unsubscribe(subscription)
    bodies = [delivery.body for delivery in deliveries]
    assert bodies[-1] == SENTINEL, f"{queue!r} delivered after the sentinel: {bodies!r}"
    return bodies[:-1]


def lacks(
    transport: Transport,
    capability: Capability,
    attempt: Callable[..., object],
    *args: object,
    **kwargs: object,
) -> bool:
    """False if ``transport`` has ``capability``. Otherwise check that trying to use it,
    ``attempt(*args, **kwargs)``, is refused with UnsupportedFeature, and return True."""
    if capability in transport.capabilities:
        return False
    with pytest.raises(UnsupportedFeature):
        attempt(*args, **kwargs)
    return True


def bodies(*names: str) -> list[bytes]:
    return [name.encode() for name in names]


# -- URLs and connections -------------------------------------------------------


def test_unknown_scheme_is_a_clear_invalid_url() -> None:
    with pytest.raises(InvalidURL, match=r"unknown transport scheme 'nosuch'.*memory://"):
        create_transport("nosuch://host/vhost")


@pytest.mark.parametrize("url", ["just-a-name", "://nothing", "no-scheme/path"])
def test_url_without_scheme_is_invalid(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOCALO_TRANSPORT", raising=False)
    with pytest.raises(InvalidURL):
        create_transport(url)


def test_an_unknown_url_option_is_refused_in_one_line(transport_url: str) -> None:
    """A misspelt option never silently becomes a default: construction refuses it,
    naming the option and the ones the transport knows, before any broker is touched."""
    separator = "&" if "?" in transport_url else "?"
    with pytest.raises(InvalidURL) as caught:
        create_transport(f"{transport_url}{separator}delivery_limt=3")
    message = str(caught.value)
    assert "unknown option 'delivery_limt'" in message
    assert "known:" in message and "delivery_limit" in message
    assert "\n" not in message


def test_url_defaults_to_environment(transport_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOCALO_TRANSPORT", transport_url)
    transport = create_transport()
    assert isinstance(transport, Transport)
    assert transport.url == transport_url
    assert not transport.connected


def test_unconnected_transport_refuses_work(transport_url: str, name: Callable) -> None:
    transport = create_transport(transport_url)
    with pytest.raises(ZocaloError):
        transport.send(name("q"), b"x")
    with pytest.raises(ZocaloError):
        transport.subscribe(name("q"), lambda delivery: None)


def test_connect_and_close(connect: Callable[..., Transport]) -> None:
    transport = connect()
    assert transport.connected
    transport.close()
    assert not transport.connected
    transport.close()  # closing twice is harmless
    assert not transport.connected


def test_context_manager_connects_and_closes(transport_url: str, name: Callable) -> None:
    with create_transport(transport_url) as transport:
        assert transport.connected
        transport.send(name("q"), b"x")
    assert not transport.connected


def test_operations_on_closed_transport_raise(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue, topic = name("q"), name("t", topic=True)
    transport.send(queue, b"x")
    received = collector()
    transport.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    transport.close()

    attempts: dict[str, Callable[[], object]] = {
        "send": lambda: transport.send(queue, b"y"),
        "broadcast": lambda: transport.broadcast(topic, b"y"),
        "publish": lambda: transport.publish([Outgoing(queue, b"y")]).result(DEADLINE),
        "subscribe": lambda: transport.subscribe(queue, collector()),
        "subscribe_broadcast": lambda: transport.subscribe_broadcast(topic, collector()),
        # The delivery went back to the queue on close; settling it must not pretend.
        "ack": lambda: transport.ack(delivery),
        "nack": lambda: transport.nack(delivery),
    }
    for operation, attempt in attempts.items():
        with pytest.raises(ZocaloError):
            attempt()
            pytest.fail(f"{operation} on a closed transport did not raise")


# -- sending and receiving ------------------------------------------------------


HEADERS: dict[str, Any] = {
    "recipe": {
        "1": {
            "service": "Fïnd spöts",
            "queue": "per_image_analysis",
            "parameters": {"ids": [1, 2, 3], "scale": 0.5, "enabled": True, "none": None},
            "output": [2],
        },
        "start": [[1, []]],
    },
    "recipe-pointer": 1,
    "unicode": "Zócalo µ 日本語 ✓ 🧪",
    "mixed-list": [1, "two", [3.5], {"four": 4}, False],
    "empty": {},
}


def test_round_trip_body_and_headers(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue = name("q")
    binary = bytes(range(256)) * 4  # opaque bytes, NULs included
    transport.send(queue, binary, headers=HEADERS)
    transport.send(queue, "tëxt ✓")  # str bodies travel as UTF-8
    transport.send(queue, b"")

    received = collector(ack_with=transport)
    subscription = transport.subscribe(queue, received)
    assert isinstance(subscription, Subscription)
    assert subscription.destination == queue
    first, text, empty = received.wait_for_count(3)

    assert first.body == binary
    for key, value in HEADERS.items():
        assert first.headers[key] == value, key
    assert text.body == "tëxt ✓".encode()
    assert empty.body == b""
    assert first.subscription is subscription
    assert first.source == queue
    assert first.ackable
    assert not first.redelivered
    assert first.delivery_count == 1
    ids = {delivery.message_id for delivery in (first, text, empty)}
    assert len(ids) == 3
    assert all(ids)


def test_precise_floats_in_headers_arrive_close_to_their_value(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    """A float AMQP cannot carry exactly (pika encodes a decimal with a 32-bit
    mantissa) arrives rounded, never refuses the publish: an epoch time in a
    dead letter's history once made RabbitMQ dead-lettering fail."""
    queue = name("q")
    floats = {"pi": 3.141592653589793, "epoch": 1764486000.125, "tiny": -2.5e-7}
    transport.send(queue, b"x", headers=floats)
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    assert delivery.headers["pi"] == pytest.approx(floats["pi"], abs=1e-8)
    assert delivery.headers["epoch"] == pytest.approx(floats["epoch"], abs=1)
    assert delivery.headers["tiny"] == pytest.approx(floats["tiny"], rel=1e-9)


def test_headers_are_not_shared_with_sender_or_between_receivers(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    transport = connect()
    queue, topic = name("q"), name("t", topic=True)
    nested = {"steps": [1, 2]}
    transport.send(queue, b"q", headers={"nested": nested})
    nested["steps"].append("sender changed it after sending")

    received = collector()
    transport.subscribe(queue, received)
    [first] = received.wait_for_count(1)
    assert first.headers["nested"] == {"steps": [1, 2]}
    first.headers["nested"]["steps"].append("receiver changed it")
    transport.nack(first, requeue=True, reason="look again")
    second = received.wait_for_count(2)[1]
    transport.ack(second)
    assert second.headers["nested"] == {"steps": [1, 2]}

    one, other = collector(), collector()
    transport.subscribe_broadcast(topic, one)
    connect().subscribe_broadcast(topic, other)
    transport.broadcast(topic, b"b", headers={"nested": {"steps": [1]}})
    [mine] = one.wait_for_count(1)
    [theirs] = other.wait_for_count(1)
    mine.headers["nested"]["steps"].append("changed by one subscriber")
    assert theirs.headers["nested"] == {"steps": [1]}


def test_fifo_for_equal_priority(transport: Transport, collector: Callable, name: Callable) -> None:
    queue = name("q")
    messages = [f"m{i:02}".encode() for i in range(40)]
    for body in messages[:20]:
        transport.send(queue, body)
    received = collector(ack_with=transport)
    transport.subscribe(queue, received, prefetch=7)
    for body in messages[20:]:  # and while consuming
        transport.send(queue, body)
    assert [delivery.body for delivery in received.wait_for_count(40)] == messages


def test_priority_orders_queued_messages(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue = name("q")
    if lacks(transport, Capability.PRIORITY, transport.send, queue, b"x", priority=5):
        assert drain(transport, queue, collector) == []
        return
    for body, priority in [
        (b"low", 1),
        (b"high-1", 9),
        (b"unset", None),
        (b"mid", 5),
        (b"high-2", 9),
    ]:
        transport.send(queue, body, priority=priority)
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    assert [delivery.body for delivery in received.wait_for_count(5)] == bodies(
        "high-1", "high-2", "mid", "low", "unset"
    )


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_limits_unacknowledged_deliveries(
    connect: Callable[..., Transport], collector: Callable, name: Callable, prefetch: int
) -> None:
    queue = name("q")
    producer, consumer, observer = connect(), connect(), connect()
    messages = [f"m{i}".encode() for i in range(prefetch + 2)]
    for body in messages:
        producer.send(queue, body)

    held = collector()  # never acks by itself
    subscription = consumer.subscribe(queue, held, prefetch=prefetch)
    assert subscription.prefetch == prefetch
    held.wait_for_count(prefetch)

    # A second consumer receives everything the first was not given: so the
    # first holds exactly `prefetch` (no message goes to two consumers).
    others = collector(ack_with=observer)
    observing = observer.subscribe(queue, others)
    others.wait_for_count(2)
    assert held.bodies == messages[:prefetch]
    assert others.bodies == messages[prefetch:]
    observer.unsubscribe(observing)

    # The next one reaches the full consumer only once it acks.
    producer.send(queue, b"next")
    consumer.ack(held.deliveries[0])
    held.wait_for_body(b"next")
    assert held.bodies == [*messages[:prefetch], b"next"]


def test_competing_consumers_share_work(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    producer, one, other = connect(), connect(), connect()
    producer.send(queue, b"a")
    producer.send(queue, b"b")

    first, second = collector(), collector()
    first_subscription = one.subscribe(queue, first)
    first.wait_for_count(1)
    second_subscription = other.subscribe(queue, second)
    second.wait_for_count(1)
    assert (first.bodies, second.bodies) == ([b"a"], [b"b"])  # the busy one is passed over
    one.ack(first.deliveries[0])
    other.ack(second.deliveries[0])
    one.unsubscribe(first_subscription)
    other.unsubscribe(second_subscription)

    both = collector()
    one.subscribe(queue, both.acking(one), prefetch=2)
    other.subscribe(queue, both.acking(other), prefetch=2)
    messages = [f"m{i}".encode() for i in range(60)]
    for body in messages:
        producer.send(queue, body)
    producer.send(queue, SENTINEL)
    expected = {*messages, SENTINEL}
    deliveries = both.wait_until(
        lambda deliveries: {delivery.body for delivery in deliveries} >= expected,
        "every message and the sentinel",
    )
    assert sorted(delivery.body for delivery in deliveries) == sorted(expected)  # none twice


# -- broadcast ------------------------------------------------------------------


def test_broadcast_gives_every_subscriber_a_copy(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    topic = name("t", topic=True)
    publisher, one, other = connect(), connect(), connect()
    subscribers = [collector(), collector(), collector()]
    one.subscribe_broadcast(topic, subscribers[0])
    other.subscribe_broadcast(topic, subscribers[1])
    other.subscribe_broadcast(topic, subscribers[2])  # two on one connection: two copies

    messages = bodies("1", "2", "3", "4")  # more than a prefetch of 1, and never acked
    for body in messages:
        publisher.broadcast(topic, body, headers={"n": body.decode(), "nested": {"x": [1]}})
    for subscriber in subscribers:
        deliveries = subscriber.wait_for_count(len(messages))
        assert [delivery.body for delivery in deliveries] == messages
        assert [delivery.headers["n"] for delivery in deliveries] == ["1", "2", "3", "4"]
        assert deliveries[0].headers["nested"] == {"x": [1]}
        assert not any(delivery.ackable for delivery in deliveries)
        assert {delivery.source for delivery in deliveries} == {topic}


def test_late_broadcast_subscriber_gets_nothing_old(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    topic = name("t", topic=True)
    publisher, listener = connect(), connect()
    publisher.broadcast(topic, b"nobody listening")
    early = collector()
    listener.subscribe_broadcast(topic, early)
    publisher.broadcast(topic, b"old")
    early.wait_for_count(1)

    late = collector()
    listener.subscribe_broadcast(topic, late)
    publisher.broadcast(topic, SENTINEL)
    late.wait_for_body(SENTINEL)
    assert late.bodies == [SENTINEL]
    assert early.wait_for_body(SENTINEL) and early.bodies == [b"old", SENTINEL]


def test_broadcast_does_not_reach_queue_consumers(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    destination = name("same-name")
    queued = collector()
    transport.subscribe(destination, queued)
    listener = collector()
    transport.subscribe_broadcast(destination, listener)
    transport.broadcast(destination, b"news")
    listener.wait_for_count(1)
    transport.send(destination, SENTINEL)
    assert [delivery.body for delivery in queued.wait_for_count(1)] == [SENTINEL]


def test_a_bound_queue_keeps_broadcasts_while_nobody_consumes_it(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    # (topic=True: a unique name not declared as a queue of the usual kind)
    queue, topic = name("kept", topic=True), name("t", topic=True)
    publisher, first = connect(), connect()
    first.bind_queue(queue, topic, expires=60)
    before = collector(ack_with=first)
    first.subscribe(queue, before)
    publisher.broadcast(topic, b"1")
    before.wait_for_count(1)
    first.close()  # its consumer gone, as when a worker restarts
    publisher.broadcast(topic, b"2")
    publisher.broadcast(topic, b"3")
    second = connect()
    second.bind_queue(queue, topic, expires=60)  # again: harmless, nothing lost
    after = collector(ack_with=second)
    second.subscribe(queue, after)
    assert [d.body for d in after.wait_for_count(2)] == [b"2", b"3"]
    assert all(d.ackable for d in after.deliveries)
    publisher.broadcast(topic, SENTINEL)
    assert after.wait_for_body(SENTINEL)[-1].body == SENTINEL
    assert before.bodies == [b"1"]


def test_closing_right_after_a_publish_acks_its_bound_queue_input(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    """close() finishes what is being confirmed, the ack of an input from a bound queue
    included (STOMP closed that queue's own connection first: the input came back)."""
    # (topic=True: a unique name not declared as a queue of the usual kind)
    queue, topic, outputs = name("kept", topic=True), name("t", topic=True), name("out")
    publisher, worker = connect(), connect()
    worker.bind_queue(queue, topic, expires=60)
    received = collector()
    worker.subscribe(queue, received)
    publisher.broadcast(topic, b"input")
    [delivery] = received.wait_for_count(1)
    worker.publish([Outgoing(outputs, b"result")], ack=delivery)
    worker.close()
    again = connect()
    again.bind_queue(queue, topic, expires=60)
    after = collector(ack_with=again)
    again.subscribe(queue, after)
    publisher.broadcast(topic, SENTINEL)
    assert [d.body for d in after.wait_for_body(SENTINEL)] == [SENTINEL], "acked, not returned"
    assert drain(again, outputs, collector) == [b"result"]


def test_a_bound_queue_unused_past_its_expiry_is_dropped(
    connect: Callable[..., Transport], collector: Callable, name: Callable, let_time_pass
) -> None:
    # (topic=True: a unique name not declared as a queue of the usual kind)
    queue, topic = name("kept", topic=True), name("t", topic=True)
    publisher, listener = connect(), connect()
    listener.bind_queue(queue, topic, expires=1)
    publisher.broadcast(topic, b"kept")
    let_time_pass(2.5)  # an expiry announces itself nowhere
    publisher.broadcast(topic, b"after the expiry: nowhere to go")
    listener.declare_queue(queue)  # a new, empty queue of that name
    assert drain(listener, queue, collector) == [], "the queue went, with what it held"


# -- kept broadcasts, replayed to late subscribers -----------------------------------


def lacks_kept_broadcasts(transport: Transport, topic: str) -> bool:
    """False if ``transport`` keeps broadcasts; else check it refuses both to keep and
    to replay them, and return True."""
    if not lacks(
        transport, Capability.KEPT_BROADCASTS, transport.keep_broadcasts, topic, seconds=60
    ):
        return False
    with pytest.raises(UnsupportedFeature):
        transport.subscribe_broadcast(topic, lambda delivery: None, replay=60)
    return True


def test_a_replaying_subscriber_hears_what_was_broadcast_before_it_came(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    topic = name("t", topic=True)
    publisher, listener = connect(), connect()
    if lacks_kept_broadcasts(publisher, topic):
        return
    publisher.keep_broadcasts(topic, seconds=60)
    publisher.keep_broadcasts(topic, seconds=60)  # again: harmless
    publisher.broadcast(topic, b"1", headers={"n": 1})
    publisher.broadcast(topic, b"2")
    late = collector()
    listener.subscribe_broadcast(topic, late, replay=60)
    plain = collector()
    listener.subscribe_broadcast(topic, plain)  # without replay: nothing old
    publisher.broadcast(topic, SENTINEL)
    deliveries = late.wait_for_body(SENTINEL)
    assert [delivery.body for delivery in deliveries] == [b"1", b"2", SENTINEL]  # none twice
    assert deliveries[0].headers == {"n": 1}
    assert not any(delivery.ackable for delivery in deliveries)
    assert {delivery.source for delivery in deliveries} == {topic}
    assert plain.wait_for_body(SENTINEL) and plain.bodies == [SENTINEL]


def test_a_replaying_subscription_keeps_the_topic_for_the_next_one(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    topic = name("t", topic=True)
    publisher, first, second = connect(), connect(), connect()
    if lacks_kept_broadcasts(publisher, topic):
        return
    publisher.broadcast(topic, b"before anyone kept the topic: gone")
    first.subscribe_broadcast(topic, collector(), replay=60)
    publisher.broadcast(topic, b"kept")
    first.close()  # as a service that stops
    later = collector()
    second.subscribe_broadcast(topic, later, replay=60)
    publisher.broadcast(topic, SENTINEL)
    assert [delivery.body for delivery in later.wait_for_body(SENTINEL)] == [b"kept", SENTINEL]


def test_a_replay_reaches_back_only_as_far_as_asked(
    connect: Callable[..., Transport], collector: Callable, name: Callable, let_time_pass
) -> None:
    topic = name("t", topic=True)
    publisher, listener = connect(), connect()
    if lacks_kept_broadcasts(publisher, topic):
        return
    publisher.keep_broadcasts(topic, seconds=60)
    publisher.broadcast(topic, b"old")
    let_time_pass(2.5)  # what a replay's start leaves out announces itself nowhere
    publisher.broadcast(topic, b"recent")
    recent = collector()
    listener.subscribe_broadcast(topic, recent, replay=1.5)
    publisher.broadcast(topic, SENTINEL)
    assert [d.body for d in recent.wait_for_body(SENTINEL)] == [b"recent", SENTINEL]


def test_an_expired_broadcast_is_not_replayed(
    connect: Callable[..., Transport], collector: Callable, name: Callable, let_time_pass
) -> None:
    topic = name("t", topic=True)
    publisher, listener = connect(), connect()
    if lacks_kept_broadcasts(publisher, topic):
        return
    publisher.keep_broadcasts(topic, seconds=60)
    publisher.broadcast(topic, b"short-lived", expiration=0.5)
    publisher.broadcast(topic, b"lasting", expiration=60)
    let_time_pass(2.5)  # an expiry announces itself nowhere
    later = collector()
    listener.subscribe_broadcast(topic, later, replay=60)
    publisher.broadcast(topic, SENTINEL)
    assert [d.body for d in later.wait_for_body(SENTINEL)] == [b"lasting", SENTINEL]


# -- unsubscribe, ack, nack -------------------------------------------------------


def test_unsubscribe_stops_queue_deliveries(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    consumer, other = connect(), connect()
    received = collector()
    subscription = consumer.subscribe(queue, received, prefetch=10)
    consumer.send(queue, b"before")
    [before] = received.wait_for_count(1)
    consumer.unsubscribe(subscription)
    consumer.ack(before)  # still owed after unsubscribing; settling it works

    # Sent while nobody else consumes: a subscription that still took messages
    # would get (some of) them before the drain's consumer exists.
    after = [f"after-{i}".encode() for i in range(10)]
    for body in after:
        consumer.send(queue, body)
    assert drain(other, queue, collector) == after  # none taken by the old subscription
    assert received.bodies == [b"before"]


def test_unsubscribe_stops_broadcast_deliveries(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    topic = name("t", topic=True)
    leaving, staying = collector(), collector()
    subscription = transport.subscribe_broadcast(topic, leaving)
    transport.subscribe_broadcast(topic, staying)
    transport.broadcast(topic, b"both")
    leaving.wait_for_count(1)
    staying.wait_for_count(1)

    transport.unsubscribe(subscription)
    transport.broadcast(topic, b"only staying")
    transport.broadcast(topic, SENTINEL)
    staying.wait_for_body(SENTINEL)
    assert staying.bodies == [b"both", b"only staying", SENTINEL]
    assert leaving.bodies == [b"both"]


def test_ack_removes_the_message(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    consumer = connect()
    consumer.send(queue, b"done")
    received = collector(ack_with=consumer)
    consumer.subscribe(queue, received)
    received.wait_for_count(1)
    consumer.close()  # would return it, had it not been acked
    assert drain(connect(), queue, collector) == []


@pytest.mark.parametrize("first", ["ack", "nack"])
@pytest.mark.parametrize("then", ["ack", "nack"])
def test_settling_twice_is_an_error(
    transport: Transport, collector: Callable, name: Callable, first: str, then: str
) -> None:
    queue = name("q")
    transport.send(queue, b"x")
    received = collector()
    transport.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    settle = {
        "ack": lambda: transport.ack(delivery),
        "nack": lambda: transport.nack(delivery, requeue=True, reason="again"),
    }
    settle[first]()
    if first == "nack":
        # The same message, redelivered to the same subscription: the old handle must
        # not settle the new delivery (a delivery is a handle, not a message id).
        redelivery = received.wait_for_count(2)[1]
        assert redelivery.message_id == delivery.message_id
    with pytest.raises(ZocaloError):
        settle[then]()
    if first == "nack":
        transport.ack(redelivery)  # still awaiting its own settlement
        transport.send(queue, SENTINEL)
        received.wait_for_body(SENTINEL)
        assert received.bodies == [b"x", b"x", SENTINEL]


def test_nack_with_requeue_redelivers(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue = name("q")
    transport.send(queue, b"again", headers={"k": "v"})
    received = collector()
    transport.subscribe(queue, received)
    [first] = received.wait_for_count(1)
    assert not first.redelivered
    assert first.delivery_count == 1

    transport.nack(first, requeue=True, reason="try again later")
    second = received.wait_for_count(2)[1]
    transport.ack(second)
    assert (second.body, second.headers["k"]) == (b"again", "v")
    assert second.message_id == first.message_id
    assert second.redelivered
    if Capability.DELIVERY_COUNT in transport.capabilities:
        assert second.delivery_count == 2
    transport.send(queue, SENTINEL)
    received.wait_for_body(SENTINEL)
    assert received.bodies == [b"again", b"again", SENTINEL]


def test_nack_without_requeue_dead_letters(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue = name("q")
    started = time.time()
    transport.send(queue, b"poison", headers={"k": "v", "nested": {"a": [1]}})
    received = collector()
    transport.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    reason = "cannot parse recipe: ünïcode reason"
    dead_letter = {"requeue": False, "reason": reason}
    if lacks(transport, Capability.DEAD_LETTER, transport.nack, delivery, **dead_letter):
        return
    transport.nack(delivery, **dead_letter)

    dead = collector(ack_with=transport)
    transport.subscribe(dlq_name(queue), dead)
    [letter] = dead.wait_for_count(1)
    assert letter.body == b"poison"
    assert (letter.headers["k"], letter.headers["nested"]) == ("v", {"a": [1]})
    assert reason in letter.headers[DLQ_REASON_HEADER]
    assert letter.headers[DLQ_QUEUE_HEADER] == queue
    assert len(letter.headers[DLQ_HISTORY_HEADER]) == 1
    assert_dated(letter.headers[DLQ_HISTORY_HEADER], started)
    assert letter.source == dlq_name(queue) == f"dlq.{queue}"

    transport.send(queue, SENTINEL)  # and it is gone from its own queue
    received.wait_for_body(SENTINEL)
    assert received.bodies == [b"poison", SENTINEL]


def test_a_dead_letter_handed_back_stays_with_its_reason(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    """A dead-letter queue has no delivery limit: a tool stopped mid-purge hands its
    dead letters back as often as it likes, and each keeps why it died."""
    queue = name("q")
    transport.send(queue, b"poison")
    received = collector()
    transport.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    dead_letter = {"requeue": False, "reason": "the first reason"}
    if lacks(transport, Capability.DEAD_LETTER, transport.nack, delivery, **dead_letter):
        return
    transport.nack(delivery, **dead_letter)
    dead = collector()
    transport.subscribe(dlq_name(queue), dead)
    handed_back = transport.delivery_limit + 1
    for count in range(1, handed_back + 1):
        letter = dead.wait_for_count(count)[-1]
        transport.nack(letter, requeue=True, reason="purge stopped")
    last = dead.wait_for_count(handed_back + 1)[-1]
    assert last.body == b"poison"
    assert "the first reason" in last.headers[DLQ_REASON_HEADER]
    assert last.headers[DLQ_QUEUE_HEADER] == queue
    transport.ack(last)


def test_delivery_limit_dead_letters_with_history(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue, limit = name("q"), transport.delivery_limit
    assert limit >= 1
    started = time.time()
    transport.send(queue, b"poison")
    received = collector()
    transport.subscribe(queue, received)
    for count in range(1, limit + 1):
        delivery = received.wait_for_count(count)[count - 1]
        assert delivery.body == b"poison"
        assert delivery.redelivered == (count > 1)
        if Capability.DELIVERY_COUNT in transport.capabilities:
            assert delivery.delivery_count == count
        if count == limit and lacks(
            transport, Capability.DEAD_LETTER, transport.nack, delivery, requeue=False
        ):
            return
        transport.nack(delivery, requeue=True, reason=f"failure {count}")

    transport.send(queue, SENTINEL)  # never delivered a (limit + 1)th time
    received.wait_for_body(SENTINEL)
    assert received.bodies == [b"poison"] * limit + [SENTINEL]

    dead = collector(ack_with=transport)
    transport.subscribe(dlq_name(queue), dead)
    [letter] = dead.wait_for_count(1)
    assert letter.body == b"poison"
    assert letter.headers[DLQ_QUEUE_HEADER] == queue
    assert letter.headers[DLQ_REASON_HEADER]
    # Embedded brokers record every return; RabbitMQ records the dead-lettering
    # itself (x-death), with x-delivery-count having counted the returns.
    assert 1 <= len(letter.headers[DLQ_HISTORY_HEADER]) <= limit
    assert_dated(letter.headers[DLQ_HISTORY_HEADER], started)


def assert_dated(history: list[Any], since: float) -> None:
    """Every history entry says when it happened, as ISO-8601 UTC text, in order."""
    stamps = [entry["at"] for entry in history]
    assert all(isinstance(stamp, str) and stamp.endswith("Z") for stamp in stamps), history
    seconds = [entry_seconds(entry) for entry in history]
    # (RabbitMQ dates its dead-lettering to the whole second)
    assert all(since - 1 <= when <= time.time() + 1 for when in seconds), history
    assert seconds == sorted(seconds)


def test_consumers_crashing_on_a_poison_message_dead_letter_it(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    producer = connect()
    producer.send(queue, b"poison")
    limit = producer.delivery_limit
    for count in range(1, limit + 1):
        consumer = connect()
        received = collector()
        consumer.subscribe(queue, received)
        [delivery] = received.wait_for_count(1)
        assert delivery.redelivered == (count > 1)
        if Capability.DELIVERY_COUNT in consumer.capabilities:
            assert delivery.delivery_count == count
        if count == limit and lacks(
            consumer, Capability.DEAD_LETTER, consumer.nack, delivery, requeue=False
        ):
            return
        consumer.abort()  # crash: no ack, no goodbye

    assert drain(producer, queue, collector) == []
    dead = collector(ack_with=producer)
    producer.subscribe(dlq_name(queue), dead)
    [letter] = dead.wait_for_count(1)
    assert letter.body == b"poison"
    assert letter.headers[DLQ_QUEUE_HEADER] == queue
    # Embedded brokers record every return; RabbitMQ records the dead-lettering
    # itself (x-death), with x-delivery-count having counted the returns.
    assert 1 <= len(letter.headers[DLQ_HISTORY_HEADER]) <= limit


# -- connection loss ----------------------------------------------------------------


def test_consumer_crash_loses_nothing(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue, prefetch = name("q"), 5
    producer = connect()
    messages = [f"m{i:02}".encode() for i in range(20)]
    for body in messages:
        producer.send(queue, body)

    crashing = connect()
    doomed = collector()  # receives and never acks
    crashing.subscribe(queue, doomed, prefetch=prefetch)
    doomed.wait_for_count(prefetch)
    crashing.abort()
    assert not crashing.connected

    survivor = connect()
    producer.send(queue, SENTINEL)
    received = collector(ack_with=survivor)
    survivor.subscribe(queue, received, prefetch=prefetch)
    received.wait_until(
        lambda deliveries: {delivery.body for delivery in deliveries} >= {*messages, SENTINEL},
        "every message and the sentinel",
    )

    taken = set(doomed.bodies)
    assert len(taken) == prefetch
    for delivery in received.deliveries:
        assert delivery.redelivered == (delivery.body in taken), delivery.body
        if delivery.body in taken and Capability.DELIVERY_COUNT in survivor.capabilities:
            assert delivery.delivery_count == 2
    everything = doomed.bodies + [body for body in received.bodies if body != SENTINEL]
    assert set(everything) == set(messages)  # no loss...
    assert len(everything) - len(set(everything)) <= prefetch  # ...at most prefetch duplicates


def test_close_returns_unacknowledged_deliveries(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    consumer = connect()
    consumer.send(queue, b"acked")
    consumer.send(queue, b"unacked")
    received = collector()
    consumer.subscribe(queue, received, prefetch=2)
    acked, _ = received.wait_for_count(2)
    consumer.ack(acked)
    consumer.close()
    assert not consumer.connected

    other = connect()
    other.send(queue, SENTINEL)
    returned = collector(ack_with=other)
    other.subscribe(queue, returned)
    deliveries = returned.wait_for_body(SENTINEL)
    assert [(delivery.body, delivery.redelivered) for delivery in deliveries] == [
        (b"unacked", True),
        (SENTINEL, False),
    ]


# -- publish: the atomic "ack this input, publish these outputs" -----------------------


def test_publish_acks_input_once_outputs_are_accepted(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    inputs, out1, out2, topic = name("in"), name("out1"), name("out2"), name("t", topic=True)
    worker, observer = connect(), connect()
    outputs = collector()
    observer.subscribe(out1, outputs.acking(observer))
    observer.subscribe(out2, outputs.acking(observer))
    news = collector()
    observer.subscribe_broadcast(topic, news)

    observer.send(inputs, b"input")
    received = collector()
    worker.subscribe(inputs, received)
    [delivery] = received.wait_for_count(1)
    confirmation = worker.publish(
        [
            Outgoing(out1, b"result-1", {"step": 1, "nested": {"ids": [1]}}),
            Outgoing(out2, b"result-2"),
            Outgoing(topic, b"news", broadcast=True),
        ],
        ack=delivery,
    )
    assert isinstance(confirmation, Confirmation)
    assert confirmation.result(DEADLINE) is None

    deliveries = outputs.wait_for_count(2)
    assert sorted(d.body for d in deliveries) == [b"result-1", b"result-2"]
    [first] = [d for d in deliveries if d.body == b"result-1"]
    assert first.headers["step"] == 1
    assert first.headers["nested"] == {"ids": [1]}
    assert news.wait_for_count(1)[0].body == b"news"

    with pytest.raises(ZocaloError):
        worker.ack(delivery)  # already acknowledged by the publish
    worker.close()  # would return the input, had the publish not acked it
    assert drain(observer, inputs, collector) == []


def test_publish_nothing_just_acks(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    worker = connect()
    worker.send(queue, b"input")
    received = collector()
    worker.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    worker.publish([], ack=delivery).result(DEADLINE)
    worker.close()
    assert drain(connect(), queue, collector) == []


def test_publish_without_ack_is_a_plain_send(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue = name("q")
    transport.publish([Outgoing(queue, b"1"), Outgoing(queue, b"2")]).result(DEADLINE)
    assert drain(transport, queue, collector) == [b"1", b"2"]


@pytest.mark.parametrize("settle", ["ack", "nack"])
def test_publish_with_settled_input_fails_and_publishes_nothing(
    transport: Transport, collector: Callable, name: Callable, settle: str
) -> None:
    inputs, outputs, topic = name("in"), name("out"), name("t", topic=True)
    news = collector()
    transport.subscribe_broadcast(topic, news)
    transport.send(inputs, b"input")
    received = collector()
    subscription = transport.subscribe(inputs, received)
    [delivery] = received.wait_for_count(1)
    transport.unsubscribe(subscription)
    if settle == "ack":
        transport.ack(delivery)
    else:
        transport.nack(delivery, requeue=True)

    # Refused either at once or through the confirmation: both are allowed.
    with pytest.raises(ZocaloError):
        transport.publish(
            [Outgoing(outputs, b"result"), Outgoing(topic, b"news", broadcast=True)],
            ack=delivery,
        ).result(DEADLINE)

    assert drain(transport, outputs, collector) == []
    transport.broadcast(topic, SENTINEL)
    news.wait_for_body(SENTINEL)
    assert news.bodies == [SENTINEL]


@pytest.mark.parametrize("priority", [2**70, -1, 256, 1.5, True], ids=repr)
def test_a_priority_out_of_range_is_refused_in_one_line_and_the_transport_goes_on(
    transport: Transport, collector: Callable, name: Callable, priority: Any
) -> None:
    """No transport stores what it cannot order by (SQLite once lost its worker to
    ``priority=2**70``, and every confirmation of that batch with it)."""
    queue, inputs = name("q"), name("in")
    transport.send(inputs, b"input")
    received = collector()
    transport.subscribe(inputs, received)
    [delivery] = received.wait_for_count(1)
    with pytest.raises(UnsupportedFeature, match="priority") as refused:
        transport.publish([Outgoing(queue, b"x", priority=priority)], ack=delivery).result(DEADLINE)
    assert "\n" not in str(refused.value)
    transport.ack(delivery)  # still ours: the refused publish did not ack it
    transport.publish([Outgoing(queue, b"after")]).result(DEADLINE)
    assert drain(transport, queue, collector) == [b"after"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delay", float("inf")),
        ("delay", -5),
        ("delay", 10**400),
        ("expiration", 1e300),
        ("expiration", -1.0),
        ("expiration", float("nan")),
    ],
    ids=lambda value: str(value)[:12],
)
def test_a_duration_out_of_range_is_refused_in_one_line_and_the_transport_goes_on(
    transport: Transport, collector: Callable, name: Callable, field: str, value: Any
) -> None:
    """Delays and expirations are checked as priorities are: SQLite once lost its
    worker to an infinite number, which no broker can hold."""
    queue, inputs = name("q"), name("in")
    transport.send(inputs, b"input")
    received = collector()
    transport.subscribe(inputs, received)
    [delivery] = received.wait_for_count(1)
    with pytest.raises(UnsupportedFeature, match=field) as refused:
        transport.publish([Outgoing(queue, b"x", **{field: value})], ack=delivery).result(DEADLINE)
    assert "\n" not in str(refused.value)
    transport.ack(delivery)  # still ours: the refused publish did not ack it
    transport.publish([Outgoing(queue, b"after")]).result(DEADLINE)
    assert drain(transport, queue, collector) == [b"after"]


@pytest.mark.parametrize("expires", [10**400, float("inf"), 0, -1], ids=lambda v: str(v)[:12])
def test_a_bound_queue_lifetime_out_of_range_is_refused_and_the_transport_goes_on(
    transport: Transport, collector: Callable, name: Callable, expires: Any
) -> None:
    # (topic=True: a unique name not declared as a queue of the usual kind)
    queue, topic = name("kept", topic=True), name("t", topic=True)
    with pytest.raises(UnsupportedFeature, match="expires"):
        transport.bind_queue(queue, topic, expires=expires)
    transport.bind_queue(queue, topic, expires=60)  # the transport goes on
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    transport.broadcast(topic, b"news")
    assert [d.body for d in received.wait_for_count(1)] == [b"news"]


@pytest.mark.parametrize(
    ("capability", "outgoing", "named"),
    [
        pytest.param(Capability.DELAY, dict(delay=0.5), "delay", id="delay"),
        pytest.param(Capability.PRIORITY, dict(priority=5), "priority", id="priority"),
        pytest.param(Capability.EXPIRATION, dict(expiration=60.0), "expiration", id="expiration"),
        pytest.param(
            Capability.DELAYED_BROADCAST,
            dict(delay=0.5, broadcast=True),
            "delay",  # "delayed-broadcast", or "delay" when plain delay is missing too
            id="delayed-broadcast",
        ),
    ],
)
def test_optional_feature_is_accepted_or_refused_outright(
    transport: Transport,
    collector: Callable,
    name: Callable,
    capability: Capability,
    outgoing: dict[str, Any],
    named: str,
) -> None:
    """Refused means refused whole: nothing of the batch is published, input not acked."""
    queue, topic, inputs = name("q"), name("t", topic=True), name("in")
    news = collector()
    transport.subscribe_broadcast(topic, news)
    transport.send(inputs, b"input")
    received = collector()
    transport.subscribe(inputs, received)
    [delivery] = received.wait_for_count(1)
    destination = topic if outgoing.get("broadcast") else queue
    batch = [
        Outgoing(queue, b"plain"),
        Outgoing(topic, b"plain news", broadcast=True),
        Outgoing(destination, b"featured", **outgoing),
    ]
    if capability in transport.capabilities:
        transport.publish(batch, ack=delivery).result(DEADLINE)
        return  # what the feature does is tested below

    with pytest.raises(UnsupportedFeature, match=named):
        transport.publish(batch, ack=delivery).result(DEADLINE)
    assert drain(transport, queue, collector) == []
    transport.broadcast(topic, SENTINEL)
    news.wait_for_body(SENTINEL)
    assert news.bodies == [SENTINEL]
    transport.ack(delivery)  # still ours: the refused publish did not ack it


def test_a_named_exchange_is_gone_through_or_refused_and_the_default_is_a_plain_send(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    """``Outgoing.exchange``: RabbitMQ routes the message by its routing key through the
    exchange; the other transports refuse it. The default exchange (``""``) is a send."""
    queue, topic, inputs = name("q"), name("t", topic=True), name("in")
    transport.publish([Outgoing(queue, b"default", exchange="")]).result(DEADLINE)
    assert drain(transport, queue, collector) == [b"default"]
    transport.send(inputs, b"input")
    received = collector()
    transport.subscribe(inputs, received)
    [delivery] = received.wait_for_count(1)
    through = Outgoing("any.key", b"routed", exchange=topic)
    if Capability.EXCHANGE not in transport.capabilities:
        with pytest.raises(UnsupportedFeature, match="exchange"):
            transport.publish([Outgoing(queue, b"plain"), through], ack=delivery)
        assert drain(transport, queue, collector) == [], "refused whole"
        transport.ack(delivery)  # still ours: the refused publish did not ack it
        return
    # An exchange that does not exist: refused in one line, naming it; nothing acked.
    with pytest.raises(ZocaloError, match=f"exchange '{topic}' does not exist"):
        transport.publish([through], ack=delivery).result(DEADLINE)
    bound = name("bound", topic=True)  # not a work queue: bind_queue makes its own kind
    transport.bind_queue(bound, topic, expires=60)  # to a fanout exchange named topic
    transport.publish([through], ack=delivery).result(DEADLINE)
    assert drain(transport, bound, collector) == [b"routed"]
    with pytest.raises(UnsupportedFeature, match="named one"):
        transport.publish([Outgoing("k", b"x", exchange=topic, delay=1)])


# -- delay and expiration ------------------------------------------------------------------


def test_delay_holds_a_message_back_and_later_ones_overtake(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue, delay = name("q"), 0.3
    if lacks(transport, Capability.DELAY, transport.send, queue, b"x", delay=delay):
        return
    received = collector(ack_with=transport)
    transport.subscribe(queue, received, prefetch=5)
    start = time.monotonic()
    transport.send(queue, b"delayed", delay=delay)
    transport.send(queue, b"prompt")
    received.wait_for_body(b"delayed", timeout=delay + DEADLINE)
    assert received.bodies == [b"prompt", b"delayed"]
    assert received.arrival(b"delayed") - start >= delay - CLOCK_SLACK


def test_delayed_message_queued_before_subscribing(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue, delay = name("q"), 0.2
    if lacks(transport, Capability.DELAY, transport.send, queue, b"x", delay=delay):
        return
    start = time.monotonic()
    transport.send(queue, b"delayed", delay=delay)
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    received.wait_for_body(b"delayed", timeout=delay + DEADLINE)
    assert received.arrival(b"delayed") - start >= delay - CLOCK_SLACK


def test_short_delay_is_not_held_behind_a_long_one(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue, long_delay = name("q"), 30.0
    if lacks(transport, Capability.DELAY, transport.send, queue, b"x", delay=0.1):
        return
    received = collector(ack_with=transport)
    transport.subscribe(queue, received)
    start = time.monotonic()
    transport.send(queue, b"long", delay=long_delay)
    transport.send(queue, b"short", delay=0.05)
    received.wait_for_body(b"short", timeout=min(DEADLINE, long_delay / 2))
    assert time.monotonic() - start < long_delay
    assert received.bodies == [b"short"]


def test_delayed_broadcast(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    topic, delay = name("t", topic=True), 0.2
    publisher, listener = connect(), connect()
    received = collector()
    listener.subscribe_broadcast(topic, received)
    if lacks(
        publisher,
        Capability.DELAYED_BROADCAST,
        publisher.broadcast,
        topic,
        b"delayed",
        delay=delay,
    ):
        publisher.broadcast(topic, SENTINEL)  # and nothing was broadcast
        received.wait_for_body(SENTINEL)
        assert received.bodies == [SENTINEL]
        return
    start = time.monotonic()
    publisher.broadcast(topic, b"delayed", delay=delay)
    publisher.broadcast(topic, b"prompt")
    received.wait_for_body(b"delayed", timeout=delay + DEADLINE)
    assert received.bodies == [b"prompt", b"delayed"]
    assert received.arrival(b"delayed") - start >= delay - CLOCK_SLACK


def test_expired_message_is_never_delivered(
    transport: Transport, collector: Callable, name: Callable, let_time_pass: Callable
) -> None:
    queue, expiration = name("q"), 0.2
    if lacks(transport, Capability.EXPIRATION, transport.send, queue, b"x", expiration=1.0):
        return
    transport.send(queue, b"stale", expiration=expiration)
    sent = time.monotonic()
    transport.send(queue, b"fresh", expiration=60.0)
    # Expiry is the absence of an event: the clock has to run past it.
    let_time_pass(sent + expiration + 0.05 - time.monotonic())
    assert drain(transport, queue, collector) == [b"fresh"]


def test_expired_message_is_not_delivered_to_a_busy_consumer(
    transport: Transport, collector: Callable, name: Callable, let_time_pass: Callable
) -> None:
    """Expiry applies while a message waits in its queue (here behind a full prefetch
    window). A message already handed to a consumer (broadcast copies included, which
    have no window) may still reach its callback, as with any real broker."""
    queue, expiration = name("q"), 0.2
    if lacks(transport, Capability.EXPIRATION, transport.send, queue, b"x", expiration=1.0):
        return
    received = collector()
    transport.subscribe(queue, received, prefetch=1)
    transport.send(queue, b"blocker")
    [blocker] = received.wait_for_count(1)
    transport.send(queue, b"stale", expiration=expiration)
    sent = time.monotonic()
    transport.send(queue, SENTINEL)
    let_time_pass(sent + expiration + 0.05 - time.monotonic())
    transport.ack(blocker)
    [_, sentinel] = received.wait_for_count(2)
    transport.ack(sentinel)
    assert received.bodies == [b"blocker", SENTINEL]


# -- introspection ----------------------------------------------------------------------------


def test_queue_stats_count_ready_delayed_and_in_flight(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue, empty = name("q"), name("empty")
    consumer, observer = connect(), connect()
    try:
        observer.queue_stats()
    except UnsupportedFeature:
        with pytest.raises(UnsupportedFeature):
            observer.depth(queue)
        return

    for body in bodies("a", "b", "c"):
        consumer.send(queue, body)
    delayed = Capability.DELAY in consumer.capabilities
    if delayed:
        consumer.send(queue, b"later", delay=60.0)
    received = collector()
    consumer.subscribe(queue, received, prefetch=1)
    received.wait_for_count(1)  # and no more: the window is full

    stats = {entry.queue: entry for entry in observer.queue_stats()}  # broker-wide view
    assert all(isinstance(entry, QueueStats) for entry in stats.values())
    assert stats[queue] == QueueStats(
        queue, ready=2, delayed=int(delayed), in_flight=1, consumers=1
    )
    assert observer.depth(queue) == 2 + int(delayed)
    assert observer.depth(empty) == 0


# -- publish acking several inputs, and python-workflows' transactions ------------------------


def take(
    transport: Transport, queue: str, count: int, collector: Callable, sent: list[bytes]
) -> tuple[Subscription, list[Delivery]]:
    """Send ``sent`` to ``queue``, then receive ``count`` of them on ``transport``, unacked."""
    for body in sent:
        transport.send(queue, body)
    received = collector()
    subscription = transport.subscribe(queue, received, prefetch=count)
    return subscription, received.wait_for_count(count)


def returned_after_close(
    worker: Transport, other: Transport, queue: str, collector: Callable
) -> list[tuple[bytes, bool]]:
    """Close ``worker``; (body, redelivered) of what ``queue`` then holds, read up to a sentinel."""
    worker.close()
    other.send(queue, SENTINEL)
    received = collector(ack_with=other)
    subscription = other.subscribe(queue, received, prefetch=10)
    deliveries = received.wait_for_body(SENTINEL)
    other.unsubscribe(subscription)
    return [(d.body, d.redelivered) for d in deliveries if d.body != SENTINEL]


def test_publish_acks_every_listed_input(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    one, two, outputs = name("in1"), name("in2"), name("out")
    worker, observer = connect(), connect()
    _, [a, b] = take(worker, one, 2, collector, [b"a", b"b"])
    _, [c] = take(worker, two, 1, collector, [b"c"])  # another subscription's input
    worker.publish([Outgoing(outputs, b"result")], ack=[a, b, c]).result(DEADLINE)

    assert drain(observer, outputs, collector) == [b"result"]
    for delivery in (a, b, c):
        with pytest.raises(ZocaloError):
            worker.ack(delivery)  # already acknowledged by the publish
    assert returned_after_close(worker, observer, one, collector) == []
    assert drain(observer, two, collector) == []


def test_publish_with_one_settled_input_acks_none_of_them(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    inputs, outputs = name("in"), name("out")
    worker, observer = connect(), connect()
    _, [a, b, c] = take(worker, inputs, 3, collector, [b"a", b"b", b"c"])
    worker.ack(b)
    with pytest.raises(ZocaloError):  # at once or through the confirmation
        worker.publish([Outgoing(outputs, b"result")], ack=[a, b, c]).result(DEADLINE)

    assert drain(observer, outputs, collector) == []
    # a and c are still the worker's to settle, and neither was acked: a comes back
    # as the worker returns it, c when the worker goes.
    worker.nack(a, requeue=True)
    assert sorted(returned_after_close(worker, observer, inputs, collector)) == [
        (b"a", True),
        (b"c", True),
    ]


def test_publish_refuses_an_input_listed_twice(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    inputs, outputs = name("in"), name("out")
    _, [delivery] = take(transport, inputs, 1, collector, [b"input"])
    with pytest.raises(ZocaloError, match="twice"):
        transport.publish([Outgoing(outputs, b"result")], ack=[delivery, delivery])
    transport.ack(delivery)  # still ours
    assert drain(transport, outputs, collector) == []


def test_transaction_commit_publishes_everything_and_acks_every_input(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    inputs, outputs, topic = name("in"), name("out"), name("t", topic=True)
    worker, observer = connect(), connect()
    news = collector()
    observer.subscribe_broadcast(topic, news)
    sent = [f"in-{i}".encode() for i in range(5)]
    subscription, deliveries = take(worker, inputs, len(sent), collector, sent)

    txn = worker.transaction_begin(subscription_id=subscription.id)
    assert isinstance(txn, int)
    assert worker.transaction_begin() != txn  # each transaction its own id
    for delivery in deliveries:
        worker.ack(delivery, transaction=txn)
        worker.send(outputs, b"out-" + delivery.body, headers={"n": 1}, transaction=txn)
    worker.broadcast(topic, b"news", transaction=txn)
    assert drain(observer, outputs, collector) == []  # held until the commit

    worker.transaction_commit(txn)
    received = collector(ack_with=observer)
    observer.subscribe(outputs, received, prefetch=10)
    results = received.wait_for_count(len(sent))
    assert [d.body for d in results] == [b"out-" + body for body in sent]
    assert results[0].headers["n"] == 1
    assert news.wait_for_count(1)[0].body == b"news"
    for delivery in deliveries:
        with pytest.raises(ZocaloError):
            worker.ack(delivery)  # the commit acknowledged it
    assert returned_after_close(worker, observer, inputs, collector) == []


def test_transaction_abort_publishes_nothing_and_inputs_return_when_the_consumer_goes(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    inputs, outputs, topic = name("in"), name("out"), name("t", topic=True)
    worker, observer = connect(), connect()
    news = collector()
    observer.subscribe_broadcast(topic, news)
    subscription, [a, b] = take(worker, inputs, 2, collector, [b"a", b"b"])

    txn = worker.transaction_begin(subscription_id=subscription.id)
    worker.ack(a, transaction=txn)
    worker.ack(b, transaction=txn)
    worker.send(outputs, b"result", transaction=txn)
    worker.broadcast(topic, b"news", transaction=txn)
    worker.transaction_abort(txn)

    assert drain(observer, outputs, collector) == []
    observer.broadcast(topic, SENTINEL)
    news.wait_for_body(SENTINEL)
    assert news.bodies == [SENTINEL]
    # Not acked (as after an AMQP tx.rollback): returned once the consumer goes away.
    assert sorted(returned_after_close(worker, observer, inputs, collector)) == [
        (b"a", True),
        (b"b", True),
    ]


def test_transaction_nack_is_applied_on_commit(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    inputs, outputs = name("in"), name("out")
    worker, observer = connect(), connect()
    for body in (b"keep", b"retry"):
        worker.send(inputs, body)
    received = collector()
    worker.subscribe(inputs, received, prefetch=2)
    keep, retry = received.wait_for_count(2)

    txn = worker.transaction_begin()
    worker.ack(keep, transaction=txn)
    worker.nack(retry, requeue=True, reason="later", transaction=txn)
    with pytest.raises(ZocaloError):
        worker.ack(retry, transaction=txn)  # already settled in this transaction
    worker.send(outputs, b"result", transaction=txn)
    worker.transaction_commit(txn)

    again = received.wait_for_count(3)[2]  # the nack returned it to the queue
    assert (again.body, again.redelivered) == (b"retry", True)
    worker.ack(again)
    assert drain(observer, outputs, collector) == [b"result"]
    assert returned_after_close(worker, observer, inputs, collector) == []


class _Uncopyable:
    """A header value no transport can carry: not JSON, not AMQP, not even deep-copyable."""

    def __deepcopy__(self, memo: object) -> None:
        raise TypeError("cannot copy this")


def test_a_message_nothing_can_carry_fails_its_publish_only(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue = name("q")
    with pytest.raises(ZocaloError, match=repr(queue)):  # at once or through the confirmation
        transport.publish(
            [Outgoing(queue, b"first"), Outgoing(queue, b"bad", {"value": _Uncopyable()})]
        ).result(DEADLINE)
    for body in bodies("ok1", "ok2", "ok3"):  # and the connection goes on as before
        transport.send(queue, body, timeout=DEADLINE)
    received = drain(transport, queue, collector)
    # Brokers without a transaction per batch may have taken the batch's first message.
    assert received in (bodies("ok1", "ok2", "ok3"), bodies("first", "ok1", "ok2", "ok3"))


@pytest.mark.parametrize("refusal", ["undeclared-queue", "uncarriable-header"])
def test_transaction_commit_that_fails_acks_no_input_and_names_the_destination(
    connect: Callable[..., Transport], collector: Callable, name: Callable, refusal: str
) -> None:
    """A commit delivers everything and acks every input, or raises naming the destination
    it could not deliver to and acks none. A queue nobody declared is refused by brokers
    that do not create queues on first use (RabbitMQ: returned as unroutable)."""
    inputs, outputs = name("in"), name("out")
    worker, observer = connect(), connect()
    subscription, [a, b] = take(worker, inputs, 2, collector, [b"a", b"b"])
    if refusal == "undeclared-queue":
        bad = f"{outputs}.never-declared.{uuid.uuid4().hex[:8]}"
        headers: dict[str, Any] = {}
    else:
        bad = name("bad")
        headers = {"value": _Uncopyable()}

    txn = worker.transaction_begin(subscription_id=subscription.id)
    worker.ack(a, transaction=txn)
    worker.ack(b, transaction=txn)
    worker.send(outputs, b"good", transaction=txn)
    worker.send(bad, b"bad", headers=headers, transaction=txn)
    try:
        worker.transaction_commit(txn)
    except ZocaloError as error:
        assert repr(bad) in str(error), error
        with pytest.raises(ZocaloError):
            worker.transaction_commit(txn)  # over, failed or not
        # Neither input was acked, and both are the worker's to settle: a comes back
        # as the worker returns it, b when the worker goes.
        worker.nack(a, requeue=True)
        assert sorted(returned_after_close(worker, observer, inputs, collector)) == [
            (b"a", True),
            (b"b", True),
        ]
        return
    assert refusal == "undeclared-queue", "a header nothing can carry was accepted"
    assert drain(observer, outputs, collector) == [b"good"]
    assert drain(observer, bad, collector) == [b"bad"]
    assert returned_after_close(worker, observer, inputs, collector) == []


def test_finished_or_unknown_transaction_is_refused(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    inputs, outputs = name("in"), name("out")
    _, [delivery] = take(transport, inputs, 1, collector, [b"input"])
    committed = transport.transaction_begin()
    transport.transaction_commit(committed)
    aborted = transport.transaction_begin()
    transport.transaction_abort(aborted)

    for txn in (committed, aborted, 99_999):
        attempts: dict[str, Callable[[], object]] = {
            "commit": lambda txn=txn: transport.transaction_commit(txn),
            "abort": lambda txn=txn: transport.transaction_abort(txn),
            "ack": lambda txn=txn: transport.ack(delivery, transaction=txn),
            "nack": lambda txn=txn: transport.nack(delivery, transaction=txn),
            "send": lambda txn=txn: transport.send(outputs, b"x", transaction=txn),
            "broadcast": lambda txn=txn: transport.broadcast(outputs, b"x", transaction=txn),
        }
        for operation, attempt in attempts.items():
            with pytest.raises(ZocaloError, match=f"transaction {txn}"):
                attempt()
                pytest.fail(f"{operation} in transaction {txn} did not raise")
    transport.ack(delivery)  # none of that settled it
    assert drain(transport, outputs, collector) == []


def test_transactional_send_of_a_lacking_feature_is_refused_at_once(
    transport: Transport, collector: Callable, name: Callable
) -> None:
    queue, topic = name("q"), name("t", topic=True)
    txn = transport.transaction_begin()
    transport.send(queue, b"plain", transaction=txn)
    if not lacks(
        transport,
        Capability.DELAYED_BROADCAST,
        transport.broadcast,
        topic,
        b"delayed",
        delay=0.5,
        transaction=txn,
    ):
        transport.transaction_abort(txn)
        return
    transport.transaction_commit(txn)  # the refused message was never added
    assert drain(transport, queue, collector) == [b"plain"]


def test_transactions_from_many_threads(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    queue = name("q")
    worker, observer = connect(), connect()
    threads, per_thread = 4, 5
    ids: list[int] = []
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                txn = worker.transaction_begin()
                ids.append(txn)
                worker.send(queue, f"{n}-{i}-a".encode(), transaction=txn)
                worker.send(queue, f"{n}-{i}-b".encode(), transaction=txn)
                worker.transaction_commit(txn)
        except BaseException as error:
            failures.append(error)

    running = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(DEADLINE * 4)
    assert not failures, failures
    assert len(set(ids)) == threads * per_thread
    received = drain(observer, queue, collector)
    expected = {
        f"{n}-{i}-{x}".encode() for n in range(threads) for i in range(per_thread) for x in "ab"
    }
    assert sorted(received) == sorted(expected)
    for n in range(threads):  # each thread's transactions in its order, a before b
        mine = [body for body in received if body.startswith(f"{n}-".encode())]
        assert mine == [f"{n}-{i}-{x}".encode() for i in range(per_thread) for x in "ab"]


# -- reply queues, and droppable messages (replies to a caller who may have gone) -------------


def lacks_reply_queues(transport: Transport) -> bool:
    """False if ``transport`` makes reply queues; else check it refuses to, and return True."""
    return lacks(transport, Capability.REPLY_QUEUE, transport.declare_reply_queue, "zocalo.reply.x")


def test_a_reply_queue_takes_replies_while_its_connection_lives(
    connect: Callable[..., Transport], collector: Callable, dropped_replies: Any
) -> None:
    caller, worker = connect(), connect()
    if lacks_reply_queues(caller):
        return
    queue = reply_queue_name()
    address = caller.declare_reply_queue(queue)
    assert caller.declare_reply_queue(queue) == address  # its own, again: harmless
    replies = collector(ack_with=caller)
    caller.subscribe(queue, replies)
    worker.publish([Outgoing(address, b"reply", droppable=True)]).result(DEADLINE)
    assert replies.wait_for_body(b"reply")[0].body == b"reply"
    assert not dropped_replies.count(address)


def test_a_reply_handed_back_returns_to_its_reply_queue(
    connect: Callable[..., Transport], collector: Callable
) -> None:
    """A reply its caller nacks (a callback that failed) comes back on the reply queue,
    as any queue's message does: not to a queue of the caller's name for it."""
    caller, worker = connect(), connect()
    if lacks_reply_queues(caller):
        return
    queue = reply_queue_name()
    address = caller.declare_reply_queue(queue)
    replies = collector()
    caller.subscribe(queue, replies)
    worker.publish([Outgoing(address, b"reply", droppable=True)]).result(DEADLINE)
    [first] = replies.wait_for_count(1)
    caller.nack(first, requeue=True, reason="the callback failed")
    again = replies.wait_for_count(2)[1]
    caller.ack(again)
    assert (again.body, again.message_id, again.redelivered) == (b"reply", first.message_id, True)


def test_a_droppable_message_reaches_a_queue_someone_consumes(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    """Droppable only means *may be dropped when its queue does not exist*."""
    queue = name("q")
    consumer, worker = connect(), connect()
    received = collector(ack_with=consumer)
    consumer.subscribe(queue, received)
    worker.publish([Outgoing(queue, b"kept", droppable=True)]).result(DEADLINE)
    assert received.wait_for_body(b"kept")[0].body == b"kept"


def test_a_droppable_message_to_no_queue_is_dropped_and_its_publish_goes_through(
    connect: Callable[..., Transport],
    collector: Callable,
    name: Callable,
    dropped_replies: Any,
) -> None:
    inputs, outputs = name("in"), name("out")
    nowhere = reply_queue_name()  # never declared
    worker, observer = connect(), connect()
    if lacks_reply_queues(worker):  # then a droppable message is delivered as any other
        return
    _, [delivery] = take(worker, inputs, 1, collector, [b"input"])
    worker.publish(
        [Outgoing(nowhere, b"reply", droppable=True), Outgoing(outputs, b"result")], ack=delivery
    ).result(DEADLINE)
    assert dropped_replies.count(nowhere) == 1, "one log line names the queue"
    assert drain(observer, outputs, collector) == [b"result"]
    assert returned_after_close(worker, observer, inputs, collector) == [], "the input was acked"


@pytest.mark.parametrize("leaves", ["close", "abort"])
def test_a_reply_queue_goes_with_its_connection_and_later_replies_are_dropped(
    connect: Callable[..., Transport],
    collector: Callable,
    name: Callable,
    dropped_replies: Any,
    leaves: str,
) -> None:
    """A caller that closes, or dies (``abort``), takes its reply queue with it: what was
    waiting there goes too, and a reply sent later neither blocks nor fails its publish."""
    inputs, outputs = name("in"), name("out")
    caller, worker, observer = connect(), connect(), connect()
    if lacks_reply_queues(caller):
        return
    queue = reply_queue_name()
    address = caller.declare_reply_queue(queue)
    caller.subscribe(queue, collector())  # never acked: returned to the queue as it goes
    worker.publish([Outgoing(address, b"unread", droppable=True)]).result(DEADLINE)
    getattr(caller, leaves)()
    dropped_replies.wait_until_gone(worker, address)

    _, [delivery] = take(worker, inputs, 1, collector, [b"input"])
    before = dropped_replies.count(address)
    worker.publish(
        [Outgoing(address, b"late reply", droppable=True), Outgoing(outputs, b"result")],
        ack=delivery,
    ).result(DEADLINE)
    assert dropped_replies.count(address) == before + 1
    assert drain(observer, outputs, collector) == [b"result"]
    assert returned_after_close(worker, observer, inputs, collector) == [], "the input was acked"
    replacement = connect()
    renewed = replacement.declare_reply_queue(queue)  # the name is free again
    received = collector(ack_with=replacement)
    replacement.subscribe(queue, received)
    replacement.publish([Outgoing(renewed, SENTINEL, droppable=True)]).result(DEADLINE)
    assert [d.body for d in received.wait_for_body(SENTINEL)] == [SENTINEL], "nothing left over"


def test_a_reply_queue_needs_a_name_no_queue_has(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    """Closing would take the queue away: a work queue, or another caller's, is refused
    where the caller names the queue; where the broker names it (ActiveMQ), two callers'
    reply queues never meet, and a work queue of the name is left alone."""
    work = name("work")
    first, second = connect(), connect()
    if lacks_reply_queues(first):
        return
    first.send(work, b"waiting")
    theirs = reply_queue_name()
    address = first.declare_reply_queue(theirs)
    if address != theirs:  # named by the broker
        assert second.declare_reply_queue(theirs) != address
        second.declare_reply_queue(work)
        second.close()
        assert drain(first, work, collector) == [b"waiting"], "the work queue kept its message"
        return
    with pytest.raises(ZocaloError, match="exists already"):
        second.declare_reply_queue(work)
    with pytest.raises(ZocaloError):
        second.declare_reply_queue(theirs)
    second.close()
    assert drain(first, work, collector) == [b"waiting"], "the work queue kept its message"


def test_a_deleted_reply_queue_goes_at_once_and_later_replies_are_dropped(
    connect: Callable[..., Transport],
    collector: Callable,
    name: Callable,
    dropped_replies: Any,
) -> None:
    """``delete_reply_queue``: the queue goes now, with what it holds, while its connection
    stays open (a caller on one connection all day leaves no queues behind); a reply sent
    later is dropped with one line, its publish going through; the name is free again.
    Deleting again, or a name that is no reply queue of this connection, does nothing."""
    inputs, outputs, work = name("in"), name("out"), name("work")
    caller, worker, observer = connect(), connect(), connect()
    if lacks(caller, Capability.REPLY_QUEUE, caller.delete_reply_queue, "zocalo.reply.x"):
        return
    queue = reply_queue_name()
    address = caller.declare_reply_queue(queue)
    worker.publish([Outgoing(address, b"unread", droppable=True)]).result(DEADLINE)
    observer.send(work, b"waiting")

    caller.delete_reply_queue(queue)
    caller.delete_reply_queue(queue)  # again: harmless
    caller.delete_reply_queue(work)  # not a reply queue of this connection: left alone
    with contextlib.suppress(UnsupportedFeature):
        assert queue not in {stats.queue for stats in caller.queue_stats()}
    _, [delivery] = take(worker, inputs, 1, collector, [b"input"])
    worker.publish(
        [Outgoing(address, b"late reply", droppable=True), Outgoing(outputs, b"result")],
        ack=delivery,
    ).result(DEADLINE)
    assert dropped_replies.count(address) == 1, "gone as soon as deleted: one line names it"
    assert drain(observer, outputs, collector) == [b"result"]
    assert returned_after_close(worker, observer, inputs, collector) == [], "the input was acked"
    assert drain(observer, work, collector) == [b"waiting"], "the work queue kept its message"

    assert caller.connected
    renewed = caller.declare_reply_queue(queue)  # the name is free again
    received = collector(ack_with=caller)
    caller.subscribe(queue, received)
    observer.publish([Outgoing(renewed, SENTINEL, droppable=True)]).result(DEADLINE)
    assert [d.body for d in received.wait_for_body(SENTINEL)] == [SENTINEL], "nothing left over"


# -- exclusive consumers: one active consumer per queue ----------------------------------


class LogLines:
    """The transports' log lines, waited for with a deadline (they come from their threads)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="zocalo.transport")
        self._caplog = caplog

    def count(self, words: str) -> int:
        return sum(words in record.getMessage() for record in self._caplog.records)

    def wait_for(self, words: str, count: int = 1) -> None:
        deadline = time.monotonic() + DEADLINE
        pause = threading.Event()
        while self.count(words) < count:
            assert time.monotonic() < deadline, f"no log line with {words!r} within {DEADLINE}s"
            pause.wait(0.01)


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> LogLines:
    return LogLines(caplog)


def knows_its_standby(transport: Transport) -> bool:
    """ActiveMQ keeps an exclusive standby without telling the client: only the others
    can log the moment it starts standing by."""
    return not transport.url.startswith("stomp")


def lacks_exclusive(transport: Transport, queue: str) -> bool:
    """False if ``transport`` can consume exclusively; otherwise check that it refuses to."""
    return lacks(transport, Capability.EXCLUSIVE, transport.subscribe, queue, print, exclusive=True)


class HeldQueue(NamedTuple):
    """A queue that ``holder`` holds exclusively (``held``: what it got, never acked by
    itself); ``producer`` sends, ``other`` is a third connection."""

    queue: str
    producer: Transport
    holder: Transport
    other: Transport
    held: Any


def an_exclusive_holder(
    connect: Callable[..., Transport], name: Callable, collector: Callable[..., Any]
) -> HeldQueue | None:
    """Three connections and a queue the second subscribes to exclusively, holding it once
    it got ``m0`` (sent first); None where the transport has no exclusive consumers (then
    checked that it refuses one)."""
    queue = name("q")
    producer, holder, other = connect(), connect(), connect()
    if lacks_exclusive(holder, queue):
        return None
    producer.send(queue, b"m0")
    held = collector()
    subscription = holder.subscribe(queue, held, prefetch=10, exclusive=True)
    assert subscription.exclusive
    held.wait_for_body(b"m0")
    return HeldQueue(queue, producer, holder, other, held)


def stand_by(transport: Transport, queue: str, collector: Callable[..., Any]) -> Any:
    """``transport`` subscribes to ``queue`` exclusively too (acking what it gets)."""
    standby = collector(ack_with=transport)
    transport.subscribe(queue, standby, prefetch=10, exclusive=True)
    return standby


def test_a_second_exclusive_consumer_stands_by_until_the_first_closes(
    connect: Callable[..., Transport], collector: Callable, name: Callable, log_lines: LogLines
) -> None:
    """Everything goes to the first; closed, its unacknowledged message returns and the
    standby gets that and the rest; each standby says when it stands by and takes over."""
    setup = an_exclusive_holder(connect, name, collector)
    if setup is None:
        return
    queue, producer, first, second, held = setup

    standby = stand_by(second, queue, collector)
    if knows_its_standby(second):
        log_lines.wait_for("standing by")
    for body in (b"m1", b"m2", SENTINEL):
        producer.send(queue, body)
    held.wait_for_body(SENTINEL)
    assert held.bodies == [b"m0", b"m1", b"m2", SENTINEL]
    assert standby.bodies == []  # each message is delivered once: none reached the standby
    for delivery in held.deliveries:
        if delivery.body != b"m2":
            first.ack(delivery)

    first.close()  # m2 was never acknowledged: it returns, to the standby
    producer.send(queue, b"m3")
    deliveries = standby.wait_until(
        lambda got: {d.body for d in got} >= {b"m2", b"m3"}, "m2 again and m3"
    )
    assert sorted(d.body for d in deliveries) == [b"m2", b"m3"]
    assert [d.redelivered for d in deliveries if d.body == b"m2"] == [True]
    if knows_its_standby(second):
        log_lines.wait_for("took over")
        assert log_lines.count("standing by") == 1 and log_lines.count("took over") == 1


def test_an_exclusive_holder_that_crashes_hands_the_queue_to_its_standby(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    """Nothing lost, nothing twice beyond the crashed holder's unacknowledged messages."""
    setup = an_exclusive_holder(connect, name, collector)
    if setup is None:
        return
    queue, producer, crashing, second, held = setup
    standby = stand_by(second, queue, collector)
    producer.send(queue, b"m1")
    held.wait_for_body(b"m1")
    assert standby.bodies == []

    crashing.abort()
    producer.send(queue, SENTINEL)
    deliveries = standby.wait_for_body(SENTINEL)
    assert sorted(d.body for d in deliveries) == [SENTINEL, b"m0", b"m1"]
    assert all(d.redelivered == (d.body != SENTINEL) for d in deliveries)


def test_an_unsubscribed_holder_hands_over_and_settles_what_it_holds(
    connect: Callable[..., Transport], collector: Callable, name: Callable
) -> None:
    setup = an_exclusive_holder(connect, name, collector)
    if setup is None:
        return
    queue, producer, first, second, held = setup
    standby = stand_by(second, queue, collector)

    first.unsubscribe(held.deliveries[0].subscription)
    producer.send(queue, b"m1")
    first.ack(held.deliveries[0])  # still its own to settle: not delivered again
    producer.send(queue, SENTINEL)
    # (Some brokers hand over only once the holder has settled what it holds.)
    assert [d.body for d in standby.wait_for_body(SENTINEL)] == [b"m1", SENTINEL]


def test_a_non_exclusive_consumer_beside_an_exclusive_one_stands_by(
    connect: Callable[..., Transport], collector: Callable, name: Callable, log_lines: LogLines
) -> None:
    """While an exclusive consumer holds a queue nobody else receives from it (RabbitMQ
    refuses such a consumer; ActiveMQ keeps it idle): a plain subscription stands by
    too, and shares the queue as usual once the exclusive one has gone."""
    setup = an_exclusive_holder(connect, name, collector)
    if setup is None:
        return
    queue, producer, holder, plain, held = setup
    waiting = collector(ack_with=plain)
    plain.subscribe(queue, waiting, prefetch=10)
    if knows_its_standby(plain):
        log_lines.wait_for("standing by")
    producer.send(queue, b"m1")
    producer.send(queue, SENTINEL)
    held.wait_for_body(SENTINEL)
    assert waiting.bodies == []

    holder.close()
    producer.send(queue, b"m2")
    deliveries = waiting.wait_until(
        lambda got: {d.body for d in got} >= {b"m0", b"m1", SENTINEL, b"m2"}, "all of them"
    )
    assert sorted(d.body for d in deliveries) == sorted([b"m0", b"m1", SENTINEL, b"m2"])


def test_an_exclusive_subscription_beside_plain_consumers_waits_for_them_to_go(
    connect: Callable[..., Transport], collector: Callable, name: Callable, log_lines: LogLines
) -> None:
    """RabbitMQ's rule, kept by memory and SQLite: an exclusive consumer never shares a
    queue, so it stands by while plain consumers read it. ActiveMQ's broker instead
    hands it the queue at once: the plain consumer gets nothing new."""
    queue = name("q")
    producer, plain, alone = connect(), connect(), connect()
    if lacks_exclusive(alone, queue):
        return
    producer.send(queue, b"m0")
    shared = collector(ack_with=plain)
    plain_subscription = plain.subscribe(queue, shared, prefetch=10)
    shared.wait_for_body(b"m0")
    exclusive = collector(ack_with=alone)
    alone.subscribe(queue, exclusive, prefetch=10, exclusive=True)
    if not knows_its_standby(alone):  # ActiveMQ
        for body in (b"m1", SENTINEL):
            producer.send(queue, body)
        assert [d.body for d in exclusive.wait_for_body(SENTINEL)] == [b"m1", SENTINEL]
        assert shared.bodies == [b"m0"]
        return
    log_lines.wait_for("standing by")
    for body in (b"m1", SENTINEL):
        producer.send(queue, body)
    shared.wait_for_body(SENTINEL)
    assert exclusive.bodies == []

    plain.unsubscribe(plain_subscription)
    producer.send(queue, b"m2")
    assert [d.body for d in exclusive.wait_for_body(b"m2")] == [b"m2"]
    log_lines.wait_for("took over")
