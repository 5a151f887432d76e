"""Reply queues on ActiveMQ beyond the transport contract: what a lost connection does."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from zocalo.errors import TransportError
from zocalo.replies import Replies
from zocalo.transport import create_transport

pytestmark = pytest.mark.stomp


def sever(transport: Any) -> None:
    """Break the connection under the transport, as a network fault would."""
    transport._link._stomp.transport.socket.shutdown(socket.SHUT_RDWR)


def test_a_lost_connection_tells_the_waiting_caller_at_once(stomp_url, stomp, dropped_replies):
    """ActiveMQ deletes a temporary queue with its connection, and the reconnected one has
    a new id: replies to the old address are dropped, so the caller stops waiting and
    says why, rather than time out."""
    caller = create_transport(stomp_url)
    caller.connect()
    try:
        replies = Replies(caller, timeout=30)
        sever(caller)
        with pytest.raises(TransportError, match="ActiveMQ deleted its reply queue"):
            next(replies)
        dropped_replies.wait_until_gone(stomp, replies.reply_to)  # the old address: gone
    finally:
        caller.close()
