"""Reply queues on ActiveMQ, each on a connection of its own, so it can be deleted.

A temporary queue (see :mod:`.temporary`) lives as long as the connection that
made it: over STOMP nothing else deletes one (ActiveMQ's STOMP converter only
ever *adds* temporary destinations; UNSUBSCRIBE removes the consumer, not the
queue). A caller that keeps one transport all day and waits on many jobs would
pile up queues, and the late replies in them, until it closed. So each reply
queue gets a small connection of its own: it is made and consumed there, and
deleting it is closing that connection (whose DISCONNECT the broker receipts
only once the connection and its temporary queues are gone). A reply sent to
it later is refused by the broker, and dropped by the sender (see
:mod:`.confirms`). The cost: one more STOMP connection per queue while it lives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from zocalo.errors import UnsupportedFeature
from zocalo.transport.stomp.connection import Link
from zocalo.transport.stomp.consumers import Consumers
from zocalo.transport.stomp.topology import Destinations
from zocalo.transport.stomp.url import Endpoint


@dataclass(frozen=True)
class ReplyQueue:
    #: The temporary queue, as its own connection names it (``/temp-queue/...``).
    destination: str
    #: Our name for it, which others send replies to (``zocalo.reply.<id>``).
    address: str
    link: Link


class ReplyQueues:
    """The reply queues of one transport, by the caller's name for each.

    ``on_lost(queue)`` is called (on stomp.py's thread) when a queue's connection
    was lost rather than closed: the broker deleted the queue with it.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        destinations: Destinations,
        consumers: Consumers,
        on_lost: Callable[[str], None],
    ) -> None:
        self._endpoint = endpoint
        self._destinations = destinations
        self._consumers = consumers
        self._on_lost = on_lost
        self._queues: dict[str, ReplyQueue] = {}
        self._lock = threading.Lock()

    def get(self, queue: str) -> ReplyQueue | None:
        with self._lock:
            return self._queues.get(queue)

    def declare(self, queue: str) -> str:
        """Make ``queue`` on a new connection (again: the same one); its address."""
        known = self.get(queue)
        if known is not None:
            return known.address
        destination = self._destinations.temporary(queue)
        link = Link(
            self._endpoint,
            on_message=lambda frame: self._consumers.on_message(frame, link),
            on_lost=lambda reason: self._lost(queue, link),
            reconnect=False,  # a new connection would have a new queue, at a new address
        )
        link.connect()
        try:
            # The first frame naming it makes it: a consumer that takes nothing.
            headers = {"ack": "client-individual", "activemq.prefetchSize": "0"}
            link.call("SUBSCRIBE", {"id": "reply-queue", "destination": destination, **headers})
            link.call("UNSUBSCRIBE", {"id": "reply-queue"})
            address = link.temporary.address(destination)
            if address is None:
                raise UnsupportedFeature(
                    f"{self._endpoint.safe_url}: the broker gave the connection no id (the "
                    "CONNECTED frame's session header), so its temporary queues cannot be "
                    "named: reply queues need ActiveMQ Classic"
                )
        except BaseException:
            link.close()
            raise
        with self._lock:
            self._queues[queue] = ReplyQueue(destination, address, link)
        return address

    def _lost(self, queue: str, link: Link) -> None:
        self._consumers.connection_lost(link)
        if link.closing:
            return
        with self._lock:
            known = self._queues.get(queue)
            if known is None or known.link is not link:
                return
            del self._queues[queue]
        self._consumers.forget(link)
        self._on_lost(queue)

    def delete(self, queue: str, *, abort: bool = False) -> None:
        """Close ``queue``'s connection (``abort``: as a crash would), deleting it."""
        with self._lock:
            known = self._queues.pop(queue, None)
        if known is None:
            return
        self._consumers.forget(known.link)
        if abort:
            known.link.abort()
        else:
            known.link.close(drain=self._endpoint.timeout)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    def close(self, *, abort: bool = False) -> None:
        """Delete every reply queue (the transport closes)."""
        for queue in self.names():
            self.delete(queue, abort=abort)
