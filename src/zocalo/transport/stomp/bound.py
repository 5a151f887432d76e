"""Queues bound to a topic (:meth:`Transport.bind_queue`) as ActiveMQ durable subscriptions.

ActiveMQ keeps a topic's messages for nobody but a *durable subscription*:
one per (client id, subscription name), consumed by one connection at a time
under that client id, kept while it has no consumer. A bound queue ``q`` of
topic ``t`` is the durable subscription named ``<prefix>.q`` on
``/topic/<prefix>.t``, under the client id ``zocalo-bound:<prefix>.q``:

- :meth:`BoundQueues.bind` makes sure it exists (a consumer that takes
  nothing, ``activemq.prefetchSize: 0``, subscribes and leaves);
- subscribing to ``q`` consumes it on a connection of its own (the client id
  is that connection's), and the plain queue ``/queue/<prefix>.q`` on the main
  connection as well: a message sent to ``q`` by name, or returned to it by a
  nack, arrives there;
- when nobody consumed it and nobody bound it again for ``expires`` seconds,
  the transport that bound it removes it. A process killed outright removes
  nothing: the broker's ``offlineDurableSubscriberTimeout`` does, where it is
  set (ActiveMQ keeps offline durable subscriptions forever by default).

Only one connection may use a client id at a time: a bind while another
process consumes the queue finds the id taken, which means the subscription
exists.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from zocalo.errors import ConnectionFailed, TransportError
from zocalo.transport.base import Subscription
from zocalo.transport.stomp.connection import Link
from zocalo.transport.stomp.consumers import Consumers, declare
from zocalo.transport.stomp.topology import Destinations
from zocalo.transport.stomp.url import Endpoint

log = logging.getLogger(__name__)

#: What ActiveMQ answers a second connection under a client id in use.
_CLIENT_ID_IN_USE = "already connected"


@dataclass(eq=False)
class Binding:
    queue: str
    topic: str
    expires: float
    bound_at: float
    #: The connection consuming the durable subscription, while subscribed.
    link: Link | None = None
    subscriptions: list[Subscription] = field(default_factory=list)
    timer: threading.Timer | None = None

    def consumed(self) -> bool:
        return any(subscription.active for subscription in self.subscriptions)


class BoundQueues:
    """The queues this transport bound, their consuming connections and their expiry."""

    def __init__(
        self, endpoint: Endpoint, destinations: Destinations, consumers: Consumers
    ) -> None:
        self._endpoint = endpoint
        self._destinations = destinations
        self._consumers = consumers
        self._bindings: dict[str, Binding] = {}
        self._lock = threading.Lock()

    def name(self, queue: str) -> str:
        """The durable subscription's name (the queue's name under the prefix)."""
        return self._destinations.queue(queue)[len("/queue/") :]

    def client_id(self, queue: str) -> str:
        return f"zocalo-bound:{self.name(queue)}"

    def bound(self, queue: str) -> Binding | None:
        with self._lock:
            return self._bindings.get(queue)

    # -- binding ----------------------------------------------------------------
    def bind(self, queue: str, topic: str, expires: float) -> None:
        with self._lock:
            binding = self._bindings.get(queue)
        if binding is None or binding.topic != topic or not binding.consumed():
            self._ensure(queue, topic)
        with self._lock:
            binding = self._bindings.get(queue)
            if binding is None or binding.topic != topic:
                binding = self._bindings[queue] = Binding(queue, topic, expires, time.monotonic())
            binding.expires, binding.bound_at = expires, time.monotonic()
            self._schedule(binding, expires)

    def _ensure(self, queue: str, topic: str) -> None:
        """Make sure the durable subscription exists (taking none of its messages)."""
        link = Link(self._endpoint, on_message=lambda frame: None, client_id=self.client_id(queue))
        try:
            link.connect()
        except ConnectionFailed as error:
            if _CLIENT_ID_IN_USE in str(error):
                return  # consumed by another connection right now: it exists
            raise
        try:
            link.call("SUBSCRIBE", self._durable_headers(queue, topic, "bind", prefetch=0))
            link.call("UNSUBSCRIBE", {"id": "bind"})
        finally:
            link.close()

    def _durable_headers(self, queue: str, topic: str, stomp_id: str, prefetch: int) -> dict:
        return {
            "id": stomp_id,
            "destination": self._destinations.topic(topic),
            "activemq.subscriptionName": self.name(queue),
            "ack": "client-individual",
            "activemq.prefetchSize": str(prefetch),
        }

    # -- consuming --------------------------------------------------------------
    def consume(self, binding: Binding, subscription: Subscription) -> None:
        """Consume the durable subscription on the binding's own connection."""
        link = binding.link
        if link is None or not link.is_open:
            link = self._open(binding.queue)
            binding.link = link
        headers = self._durable_headers(binding.queue, binding.topic, "", subscription.prefetch)
        headers.pop("id")
        headers.pop("destination")
        binding.subscriptions.append(subscription)
        try:
            self._consumers.consume(
                subscription, self._destinations.topic(binding.topic), headers, link
            )
        except BaseException:
            binding.subscriptions.remove(subscription)
            raise

    def _open(self, queue: str) -> Link:
        link = Link(
            self._endpoint,
            on_message=lambda frame: self._consumers.on_message(frame, link),
            on_lost=lambda reason: self._consumers.connection_lost(link),
            on_reconnected=lambda: self._consumers.restore(link),
            client_id=self.client_id(queue),
        )
        try:
            link.connect()
        except ConnectionFailed as error:
            if _CLIENT_ID_IN_USE in str(error):
                raise ConnectionFailed(
                    f"{error}: the bound queue {queue!r} is consumed by another connection "
                    "(ActiveMQ lets one connection at a time consume a durable subscription)"
                ) from None
            raise
        return link

    # -- expiry -----------------------------------------------------------------
    def _schedule(self, binding: Binding, delay: float) -> None:
        """(Lock held) check the binding's expiry in ``delay`` seconds."""
        if binding.timer is not None:
            binding.timer.cancel()
        binding.timer = threading.Timer(delay, self._expire, args=(binding,))
        binding.timer.daemon = True
        binding.timer.start()

    def _expire(self, binding: Binding) -> None:
        with self._lock:
            if self._bindings.get(binding.queue) is not binding:
                return
            left = binding.bound_at + binding.expires - time.monotonic()
            if binding.consumed() or left > 0:
                self._schedule(binding, max(left, binding.expires))
                return
            del self._bindings[binding.queue]
            link, binding.link = binding.link, None
        if link is not None:
            self._consumers.forget(link)
            link.close()
        try:
            self._remove(binding.queue, binding.topic)
        except TransportError as error:
            log.warning("could not remove the expired bound queue %r: %s", binding.queue, error)

    def _remove(self, queue: str, topic: str) -> None:
        """Remove the durable subscription (with what it kept)."""
        link = Link(self._endpoint, on_message=lambda frame: None, client_id=self.client_id(queue))
        try:
            link.connect()
        except ConnectionFailed as error:
            if _CLIENT_ID_IN_USE in str(error):
                return  # someone consumes it again: it is theirs now
            raise
        try:
            name = self.name(queue)
            link.call("UNSUBSCRIBE", {"id": "remove", "activemq.subscriptionName": name})
        finally:
            link.close()

    def close(self, *, abort: bool = False) -> None:
        """Stop every expiry timer and close the consuming connections (the durable
        subscriptions stay, keeping what is broadcast for the next consumer);
        ``abort``: drop them, as a crash would."""
        with self._lock:
            bindings = list(self._bindings.values())
            self._bindings.clear()
        for binding in bindings:
            if binding.timer is not None:
                binding.timer.cancel()
            if binding.link is not None:
                self._consumers.forget(binding.link)
                if abort:
                    binding.link.abort()
                else:
                    binding.link.close(drain=self._endpoint.timeout)


class TopicQueues(BoundQueues):
    """Bound queues on RabbitMQ: a queue of the work queues' kind, bound to the topic
    (declared and removed on a connection of their own: see :func:`.consumers.declare`).

    A SUBSCRIBE to ``/topic/<prefix>.t`` naming a queue (``x-queue-name``), durable
    and never auto-deleted, declares ``<prefix>.q`` with the arguments every other
    frame naming that queue carries (see :mod:`.flavour`) and binds it to the topic;
    unsubscribing leaves it. So ``q`` is consumed, sent to and returned to as any
    queue. RabbitMQ would expire it (``x-expires``) only if its arguments said so,
    and then they would differ from a work queue's: the transport that bound it
    removes it instead (unsubscribing durably, which deletes it), once it has had no
    consumer here and no new bind for ``expires`` seconds. A process killed outright
    removes nothing: the queue stays until someone deletes it.
    """

    def _queue(self, queue: str) -> dict[str, str]:
        """The headers that name the bound queue (and declare it as a work queue)."""
        return {
            "x-queue-name": self.name(queue),
            **self._consumers.flavour.queue_arguments(self._destinations.queue(queue)),
        }

    def _ensure(self, queue: str, topic: str) -> None:
        flavour = self._consumers.flavour
        declare(self._endpoint, flavour, self._destinations.topic(topic), self._queue(queue))

    def consume(self, binding: Binding, subscription: Subscription) -> None:
        """The queue's own subscription consumes it: only counted here, for its expiry."""
        binding.subscriptions.append(subscription)

    def _remove(self, queue: str, topic: str) -> None:
        """Unsubscribing durably (as RabbitMQ 3.10 wants it said) deletes the queue."""
        named = self._queue(queue)
        durably = {key: named[key] for key in ("durable", "auto-delete", "x-queue-name")}
        declare(
            self._endpoint,
            self._consumers.flavour,
            self._destinations.topic(topic),
            named,
            leaving={"persistent": "true", **durably},
        )
