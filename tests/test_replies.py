"""The caller's side of replies (``zocalo.replies.Replies``), on every transport: what it
yields, when it stops, and what it says when it cannot go on."""

from __future__ import annotations

import logging
import uuid

import pytest

import zocalo
from zocalo.errors import TransportError, UnsupportedFeature
from zocalo.recipe import wire
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import REPLY_TO, Reply
from zocalo.replies import Replies
from zocalo.transport import Capability, Outgoing, Transport, create_transport
from zocalo.transport.memory import MemoryTransport

#: Seconds to wait for what should happen promptly (waits end as soon as it does).
DEADLINE = 10.0


@pytest.fixture
def url() -> str:
    return f"memory://replies-{uuid.uuid4().hex}"


def reply(sender: Transport, queue: str, body: bytes) -> None:
    sender.publish([Outgoing(queue, body, droppable=True)]).result(5)


def test_the_expected_replies_end_the_iteration_and_an_owned_connection(each_transport_url):
    caller, sender = create_transport(each_transport_url), create_transport(each_transport_url)
    caller.connect()
    sender.connect()
    try:
        replies = Replies(caller, expected=2, timeout=5, owns_transport=True)
        for n in range(3):
            reply(sender, replies.reply_to, Reply(n, "job", 1).encode())
        assert [r.payload for r in replies] == [0, 1]
        assert not caller.connected, "closed once the replies expected came"
        replies.close()  # again: harmless
    finally:
        sender.close()


def test_what_is_not_a_reply_is_skipped_with_a_warning(each_transport_url, caplog):
    with create_transport(each_transport_url) as caller:
        replies = Replies(caller, timeout=5)
        reply(caller, replies.reply_to, b"not json")
        reply(caller, replies.reply_to, Reply("the one").encode())
        with caplog.at_level(logging.WARNING, logger="zocalo.replies"):
            assert next(replies) == Reply("the one")
        assert "ignoring what is not a reply" in caplog.text and "not valid JSON" in caplog.text
        assert caller.connected, "the caller's own connection stays open"


def test_a_failed_connection_ends_the_wait_saying_why(each_transport_url):
    with create_transport(each_transport_url) as caller:
        replies = Replies(caller, timeout=30)
        caller.report_failure("broker file replaced")
        with pytest.raises(TransportError, match="stopped waiting for replies: broker file"):
            next(replies)
        assert replies._connection_failed not in caller.failure_listeners


@pytest.mark.parametrize(("expected", "timeout"), [(0, 5), (1, 0)])
def test_nonsense_limits_are_refused(url, expected, timeout):
    with create_transport(url) as caller, pytest.raises(ValueError):
        Replies(caller, expected=expected, timeout=timeout)


def test_a_transport_without_reply_queues_refuses_to_wait_in_one_line(url):
    """A broker that cannot make a reply queue says so before the job is sent."""

    class NoReplies(MemoryTransport):
        capabilities = MemoryTransport.capabilities - {Capability.REPLY_QUEUE}

        def declare_reply_queue(self, queue: str) -> None:
            Transport.declare_reply_queue(self, queue)

    with NoReplies(url) as caller, pytest.raises(UnsupportedFeature, match="cannot make a reply"):
        Replies(caller)


# -- a long-lived caller leaves no reply queues behind -----------------------------------------


@pytest.mark.slow  # 200 jobs: seconds on a broker that runs as a server
def test_many_submits_on_one_connection_leave_no_reply_queue_behind(
    each_transport_url, dropped_replies
):
    """A caller that keeps its connection (beamline software submitting all day): each
    job's reply queue is deleted when its replies are closed, not when the connection
    goes. A reply to any of them afterwards finds no queue and is dropped, one line each,
    and the connection stays the caller's."""
    jobs = f"replies.jobs.{uuid.uuid4().hex}"
    recipe = {"1": {"service": "Nobody", "queue": jobs}, "start": [[1, {}]]}
    with (
        create_transport(each_transport_url) as caller,
        create_transport(each_transport_url) as sender,
    ):
        caller.declare_queue(jobs)
        addresses = []
        for _ in range(200):
            replies = zocalo.submit(caller, recipe=recipe, direct=True, timeout=DEADLINE)
            addresses.append(replies.reply_to)
            replies.close()
        assert len(set(addresses)) == 200 and caller.connected
        probes = [Outgoing(address, b"late", droppable=True) for address in addresses]
        sender.publish(probes).result(DEADLINE)
        assert [dropped_replies.count(address) for address in addresses] == [1] * 200
        with_replies = [q for q in queue_names(caller) if q.startswith("zocalo.reply.")]
        assert with_replies == [], "no reply queue holds anything or has a consumer"


def queue_names(transport: Transport) -> list[str]:
    """The queues ``transport`` reports (none where it cannot say)."""
    try:
        return [stats.queue for stats in transport.queue_stats()]
    except UnsupportedFeature:
        return []


# -- a reply that comes twice counts once ------------------------------------------------------


def handle(transport: Transport, jobs: str, collector, *, parts: list[str], crash: bool) -> None:
    """Take one job from ``jobs`` and reply once per part, as a handler does; the replies
    go out with the step's publish. With ``crash`` the process dies before the input's
    acknowledgement (the connection just drops): the job returns to its queue."""
    received = collector()
    transport.subscribe(jobs, received)
    [delivery] = received.wait_for_count(1, timeout=DEADLINE)
    message = wire.decode(delivery.body, delivery.headers, delivery.describe())
    step = RecipeStep(message, headers=delivery.headers, message_id=delivery.message_id)
    for part in parts:
        step.reply(part)
    if crash:
        transport.publish(step.outputs).result(DEADLINE)
        transport.abort()
    else:
        transport.publish(step.outputs, ack=delivery).result(DEADLINE)
        transport.close()


def test_a_step_handled_again_after_a_crash_is_counted_once(each_transport_url, collector, caplog):
    """A worker replies twice and dies after its replies went out but before its input
    was acknowledged; the input is redelivered and the step replies the same two again.
    A caller waiting for three replies (``--results 3``) sees each distinct reply once,
    and waits for the third, which another job sends last."""
    jobs = f"replies.jobs.{uuid.uuid4().hex}"
    recipe = {"1": {"service": "Replier", "queue": jobs}, "start": [[1, {}]]}

    def worker() -> Transport:
        transport = create_transport(each_transport_url)
        transport.connect()
        return transport

    with create_transport(each_transport_url) as caller:
        caller.declare_queue(jobs)
        replies = Replies(caller, expected=3, timeout=DEADLINE)
        environment = {REPLY_TO: replies.reply_to}
        start = RecipeStep()
        start.start(recipe, environment=environment)
        caller.publish(start.outputs).result(DEADLINE)
        handle(worker(), jobs, collector, parts=["a", "b"], crash=True)
        handle(worker(), jobs, collector, parts=["a", "b"], crash=False)  # redelivered
        start = RecipeStep()
        start.start(recipe, environment=environment)
        caller.publish(start.outputs).result(DEADLINE)
        handle(worker(), jobs, collector, parts=["c"], crash=False)
        with caplog.at_level(logging.DEBUG, logger="zocalo.replies"):
            assert [reply.payload for reply in replies] == ["a", "b", "c"]
        assert replies.received == 3
        assert caplog.text.count("skipping a repeated reply") == 2
