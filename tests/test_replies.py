"""The caller's side of replies (``zocalo.replies.Replies``), on every transport: what it
yields, when it stops, and what it says when it cannot go on."""

from __future__ import annotations

import logging
import uuid

import pytest

from zocalo.errors import TransportError, UnsupportedFeature
from zocalo.recipe.wire import Reply
from zocalo.replies import Replies
from zocalo.transport import Capability, Outgoing, Transport, create_transport
from zocalo.transport.memory import MemoryTransport


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
