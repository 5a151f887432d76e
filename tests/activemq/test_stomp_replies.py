"""Reply queues on ActiveMQ beyond the transport contract: what a lost connection does."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from zocalo.errors import TransportError
from zocalo.recipe.wire import Reply
from zocalo.replies import Replies
from zocalo.transport import Outgoing, create_transport

pytestmark = pytest.mark.stomp


def sever(link: Any) -> None:
    """Break a connection of the transport, as a network fault would."""
    link._stomp.transport.socket.shutdown(socket.SHUT_RDWR)


def test_a_lost_connection_tells_the_waiting_caller_at_once(stomp_url, stomp, dropped_replies):
    """ActiveMQ deletes a temporary queue with its connection (a reply queue has one of its
    own, see ``stomp.reply_queues``): replies to the address are dropped from then on, so
    the caller stops waiting and says why, rather than time out."""
    caller = create_transport(stomp_url)
    caller.connect()
    try:
        replies = Replies(caller, timeout=30)
        sever(caller._reply_queues.get(replies.queue).link)
        with pytest.raises(TransportError, match="ActiveMQ deleted the queue with it"):
            next(replies)
        dropped_replies.wait_until_gone(stomp, replies.reply_to)  # the old address: gone
    finally:
        caller.close()


def test_a_lost_main_connection_leaves_the_reply_queue_alone(stomp_url, stomp):
    """The transport reconnects its own connection; the reply queue, on its own, lives on
    at the same address, and the caller gets its reply."""
    caller = create_transport(stomp_url)
    caller.connect()
    try:
        replies = Replies(caller, timeout=30)
        sever(caller._link)
        stomp.publish(
            [Outgoing(replies.reply_to, Reply("still here").encode(), droppable=True)]
        ).result(10)
        assert next(replies) == Reply("still here")
    finally:
        caller.close()
