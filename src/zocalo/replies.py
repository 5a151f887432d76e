"""The caller's side of a job's replies: a private reply queue, and the replies on it.

``zocalo.go --wait`` and :func:`zocalo.submit` open :class:`Replies` before
they send the job, so no reply can come before anyone listens. It declares a reply
queue on the caller's connection (private to it: the broker drops the queue, and any
reply sent to it later, once that connection is gone) and consumes it; the job names
its address, :attr:`Replies.reply_to` (which the broker may have chosen). Iterating
yields each :class:`~zocalo.recipe.wire.Reply` as it arrives, stops after the replies
expected, and raises :class:`ReplyTimeout` if they have not all come in time.

A reply may come twice (delivery is at least once: a step whose input is redelivered
after a crash replies again, and ActiveMQ sends replies outside the step's
transaction): one whose identity (:data:`~zocalo.recipe.wire.REPLY_ID_HEADER`) came
already is skipped, so the replies expected are distinct ones. Closing deletes the
reply queue, with any reply still in it, even when the connection stays open (a
caller that submits all day on one connection leaves no queues behind); a reply
sent later is dropped by the broker, as after the connection went.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator

from zocalo.errors import InvalidMessage, TransportError, ZocaloError
from zocalo.recipe.wire import REPLY_ID_HEADER, Reply
from zocalo.transport.base import Delivery, Subscription, Transport, reply_queue_name

log = logging.getLogger(__name__)

#: Seconds ``zocalo.go --wait`` (and :func:`zocalo.submit`) wait unless told.
DEFAULT_WAIT = 300.0
#: Replies the broker may hand over before the caller has read the earlier ones.
PREFETCH = 100


class ReplyTimeout(ZocaloError):
    """Fewer replies than expected arrived in time."""


class Replies(Iterator[Reply]):
    """The replies to one job on ``transport``, in the order they arrive.

    ``expected`` replies end the iteration; ``timeout`` seconds from now is when they
    must all have arrived. With ``owns_transport`` the connection is closed once
    iteration ends (or :meth:`close`); otherwise its consumer stops and the reply
    queue is deleted, and the connection stays the caller's.
    """

    def __init__(
        self,
        transport: Transport,
        queue_name: str | None = None,
        *,
        expected: int = 1,
        timeout: float = DEFAULT_WAIT,
        owns_transport: bool = False,
    ) -> None:
        if expected < 1:
            raise ValueError(f"expected is at least 1 reply, not {expected}")
        if timeout <= 0:
            raise ValueError(f"timeout is a number of seconds above 0, not {timeout}")
        self.transport = transport
        self.queue = queue_name or reply_queue_name()
        #: Where replies are sent (the job carries it): the queue's address, as
        #: ``declare_reply_queue`` gave it.
        self.reply_to = self.queue
        self.expected = expected
        self.timeout = timeout
        self.received = 0
        #: The identities of the replies received (a repeated one is skipped).
        self._seen: set[str] = set()
        #: The job's recipe ID, for messages (set by whoever sends the job).
        self.recipe_id: str | None = None
        self._owns_transport = owns_transport
        self._inbox: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._failure: str | None = None
        self._subscription: Subscription | None = None
        self._declared = False
        self._closed = False
        self._deadline = time.monotonic() + timeout
        transport.failure_listeners.append(self._connection_failed)
        try:
            self.reply_to = transport.declare_reply_queue(self.queue)
            self._declared = True
            self._subscription = transport.subscribe(self.queue, self._arrived, prefetch=PREFETCH)
        except BaseException:
            self.close()
            raise

    def _arrived(self, delivery: Delivery) -> None:
        """On the transport's thread: a reply is the caller's once it is here (acked)."""
        self.transport.ack(delivery)
        self._inbox.put(delivery)

    def _connection_failed(self, reason: str) -> None:
        self._failure = reason
        self._inbox.put(None)

    def __next__(self) -> Reply:
        if self.received >= self.expected:
            self.close()
            raise StopIteration
        while True:
            remaining = max(0.0, self._deadline - time.monotonic())
            try:
                delivery = self._inbox.get(timeout=remaining)
            except queue.Empty:
                self.close()
                raise ReplyTimeout(self._late()) from None
            if delivery is None:
                self.close()
                raise TransportError(f"stopped waiting for replies: {self._failure}")
            try:
                reply = Reply.decode(delivery.body, delivery.describe())
            except InvalidMessage as error:
                log.warning("ignoring what is not a reply: %s", error)
                continue
            identity = delivery.headers.get(REPLY_ID_HEADER)
            if identity is not None:
                if identity in self._seen:
                    log.debug("skipping a repeated reply %s: %s", identity, delivery.describe())
                    continue
                self._seen.add(identity)
            self.received += 1
            return reply

    def _late(self) -> str:
        """Why the wait ended: how many of the replies came, for which job, in how long."""
        kind = "reply" if self.expected == 1 else "replies"
        job = f"recipe {self.recipe_id}" if self.recipe_id else "the job"
        return (
            f"timed out: {self.received} of {self.expected} {kind} for {job} arrived "
            f"within {self.timeout:g} s"
        )

    def close(self) -> None:
        """Stop listening and delete the reply queue (idempotent); an owned connection
        closes, which deletes it too."""
        if self._closed:
            return
        self._closed = True
        if self._connection_failed in self.transport.failure_listeners:
            self.transport.failure_listeners.remove(self._connection_failed)
        try:
            if self._owns_transport:
                self.transport.close()
                return
            if self._subscription is not None and self._subscription.active:
                self.transport.unsubscribe(self._subscription)
            if self._declared:
                self.transport.delete_reply_queue(self.queue)
        except ZocaloError as error:
            log.warning("could not delete reply queue %s: %s", self.queue, error)

    def __enter__(self) -> Replies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
