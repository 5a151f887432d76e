"""What ActiveMQ's queues hold, over STOMP: every queue of our prefix and its dead-letter
queue, browsed, nothing consumed (the dead-letter tools and Schlockmeister read them).
Depths by state (``queue_stats``) are refused: STOMP cannot tell them."""

from __future__ import annotations

import uuid

import pytest

from zocalo.errors import TransportError, UnsupportedFeature
from zocalo.transport import Outgoing, create_transport
from zocalo.transport.base import QueueStats

pytestmark = pytest.mark.stomp


def test_browsing_counts_each_queue_and_dead_letter_queue_of_the_prefix(activemq, collector):
    prefix, other = f"qs{uuid.uuid4().hex[:8]}", f"qs{uuid.uuid4().hex[:8]}"
    with (
        create_transport(activemq.url(prefix=prefix)) as ours,
        create_transport(activemq.url(prefix=other)) as theirs,
        create_transport(activemq.url(prefix=prefix)) as holder,
    ):
        assert ours.browsed_queue_stats() == []
        messages = [Outgoing("a", b"1"), Outgoing("a", b"2"), Outgoing("a", b"3")]
        messages += [Outgoing("dlq.a", b"dead"), Outgoing("b", b"x"), Outgoing("b", b"y")]
        ours.publish(messages).result(30)
        theirs.publish([Outgoing("a", b"elsewhere")]).result(30)
        held = collector()  # never settled: in flight while the stats are read
        holder.subscribe("b", held, prefetch=1)
        held.wait_for_count(1)

        stats = ours.browsed_queue_stats()

        assert stats == [QueueStats("a", ready=3), QueueStats("b", ready=2), QueueStats("dlq.a", 1)]
        assert theirs.browsed_queue_stats() == [QueueStats("a", ready=1)]
        taken = collector(ack_with=ours)
        ours.subscribe("a", taken, prefetch=10)
        deliveries = taken.wait_for_count(3)
        assert [d.delivery_count for d in deliveries] == [1, 1, 1]  # browsing delivered nothing


def test_the_dead_letter_queues_are_browsed_alone(activemq):
    with create_transport(activemq.url(prefix=f"qs{uuid.uuid4().hex[:8]}")) as transport:
        transport.publish([Outgoing("a", b"1"), Outgoing("dlq.a", b"2")]).result(30)
        dead = transport.browsed_queue_stats(dead_letters_only=True)
        assert dead == [QueueStats("dlq.a", ready=1)]


def test_depths_by_state_are_refused_saying_why(stomp):
    with pytest.raises(UnsupportedFeature, match="no queue depths by state"):
        stomp.queue_stats()


def test_queues_beyond_what_one_browser_sees_are_all_found_and_counted(activemq):
    """A browser sees about 400 messages (ActiveMQ's maxBrowsePageSize), and a wildcard
    browser that many in all: two deep dead-letter queues and three shallow ones."""
    with create_transport(activemq.url(prefix=f"qs{uuid.uuid4().hex[:8]}")) as transport:
        deep = [Outgoing(f"dlq.deep{n}", b"x" * 100) for n in range(2) for _ in range(450)]
        shallow = [Outgoing(f"dlq.shallow{n}", b"y") for n in range(3) for _ in range(n + 1)]
        transport.publish(deep + shallow).result(60)

        stats = {s.queue: s.ready for s in transport.browsed_queue_stats(dead_letters_only=True)}

        assert {
            name: stats.get(name) for name in ("dlq.shallow0", "dlq.shallow1", "dlq.shallow2")
        } == {
            "dlq.shallow0": 1,
            "dlq.shallow1": 2,
            "dlq.shallow2": 3,
        }
        assert all(300 <= stats.get(f"dlq.deep{n}", 0) <= 450 for n in range(2)), stats


@pytest.mark.parametrize(
    ("count", "name"),
    [
        (300, "dlq.many.{:04d}"),
        # Under 10,000 characters, but each name's colon ("queue://") is escaped in two.
        (320, "dlq.m{:03d}"),
    ],
)
def test_too_many_queues_to_tell_apart_is_one_clear_error(activemq, count, name):
    """Each round's selector names the queues found so far; ActiveMQ refuses a header
    line over 10 KiB on the wire (and drops the connection): refused before it is sent."""
    url = activemq.url(prefix=f"qs{uuid.uuid4().hex[:8]}")
    with create_transport(url) as transport:
        transport.publish([Outgoing(name.format(n), b"1") for n in range(count)]).result(60)
        with pytest.raises(TransportError, match=r"more queues hold messages under .* than one"):
            transport.browsed_queue_stats(dead_letters_only=True)
        assert transport.connected
