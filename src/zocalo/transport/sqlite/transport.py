"""The embedded broker: ``sqlite:///path/to/broker.db``, shared by processes on one machine.

Each transport object is one connection. This module is its public face: the
:class:`~zocalo.transport.base.Transport` API, which turns each call into an
operation (``operations.py``) for the connection's worker (``worker.py``),
the one thread that writes the broker file, through its ``Store``
(``store.py``), in group commits.

URL options (see :data:`OPTIONS`; anything else is refused): ``synchronous``
(normal|full, see ``schema.py``), ``visibility_timeout`` (lease seconds, default 60,
at least 1), ``reap_interval`` (seconds between dead-consumer checks, default 0.5),
``delivery_limit``, ``group`` (share the broker's files with one group, see
``files.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zocalo.errors import ConnectionFailed, InvalidURL, TransportError
from zocalo.transport.base import (
    DEFAULT_DELIVERY_LIMIT,
    Acks,
    Callback,
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    QueueStats,
    Subscription,
    Transport,
    checked_duration,
    deliveries_to_ack,
    reserve_all_or_none,
)
from zocalo.transport.options import Option, parse_options, split_url
from zocalo.transport.registry import redact_url
from zocalo.transport.sqlite.consumers import Consumer, Consumers
from zocalo.transport.sqlite.files import Permissions, locks_directory
from zocalo.transport.sqlite.operations import (
    Ack,
    Bind,
    DeclareReplyQueue,
    DeleteReplyQueue,
    Keep,
    Nack,
    Publish,
    Reap,
    Subscribe,
    Unsubscribe,
)
from zocalo.transport.sqlite.schema import SYNCHRONOUS_LEVELS
from zocalo.transport.sqlite.store import read_queue_stats
from zocalo.transport.sqlite.worker import Worker

#: The URL options ``sqlite:///path?...`` understands. A lease must outlast a round of
#: renewals (every third of it), or two consumers would hold one message at once.
OPTIONS = (
    Option("delivery_limit", int, DEFAULT_DELIVERY_LIMIT, at_least=1),
    Option("visibility_timeout", float, 60.0, at_least=1),
    Option("reap_interval", float, 0.5, at_least=0.05),  # 0 would re-poll in a hot loop
    Option("synchronous", str, "normal", choices=SYNCHRONOUS_LEVELS),
    Option("group", str, None),
)


def broker_path(url: str) -> Path:
    """The file a ``sqlite://`` URL names (``sqlite:///abs/path`` or ``sqlite://rel/path``)."""
    parts = split_url(url)
    path = parts.netloc + parts.path
    if not path:
        raise InvalidURL(
            f"{redact_url(url)!r} names no broker file (expected sqlite:///path/to/broker.db)"
        )
    # Absolute: a service that changes its working directory keeps its broker file.
    return Path(path).expanduser().absolute()


class SqliteTransport(Transport):
    """One connection to a broker file shared by every process on this machine."""

    schemes = ("sqlite",)
    serial_callbacks = True
    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.EXPIRATION,
            Capability.DELIVERY_COUNT,
            Capability.DEAD_LETTER,
            Capability.CROSS_PROCESS,
            Capability.DELAYED_BROADCAST,
            Capability.REPLY_QUEUE,
            Capability.KEPT_BROADCASTS,
            Capability.EXCLUSIVE,
        }
    )

    def __init__(
        self,
        url: str,
        *,
        delivery_limit: int | None = None,
        visibility_timeout: float | None = None,
        reap_interval: float | None = None,
        synchronous: str | None = None,
        group: str | None = None,
    ) -> None:
        options = parse_options(
            url,
            OPTIONS,
            {
                "delivery_limit": delivery_limit,
                "visibility_timeout": visibility_timeout,
                "reap_interval": reap_interval,
                "synchronous": synchronous,
                "group": group,
            },
        )
        super().__init__(url, delivery_limit=options["delivery_limit"])
        self.path = broker_path(url)
        self.visibility_timeout: float = options["visibility_timeout"]
        self.reap_interval: float = options["reap_interval"]
        self.synchronous: str = options["synchronous"]
        self.group: str | None = options["group"] or None
        self._consumers = Consumers()
        #: From connect on: the connection's files and threads.
        self._worker: Worker | None = None
        self._closed_unopened = False

    # -- connection ---------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._worker is not None and self._worker.state == "open"

    @property
    def locks_directory(self) -> Path:
        return locks_directory(self.path)

    def connect(self) -> None:
        if self.connected:
            return
        if self._worker is not None or self._closed_unopened:
            raise ConnectionFailed(f"{self.url}: a closed transport cannot reconnect")
        worker = Worker(
            self.url,
            self.path,
            permissions=Permissions.for_group(self.group),
            synchronous=self.synchronous,
            visibility_timeout=self.visibility_timeout,
            reap_interval=self.reap_interval,
            delivery_limit=self.delivery_limit,
            consumers=self._consumers,
            hand_over=self.hand_over,
            report_failure=self.report_failure,
        )
        self._worker = worker
        worker.start()

    def close(self) -> None:
        """Unregister, return every unacknowledged delivery, and close the file."""
        if self._worker is None:
            self._closed_unopened = True
            return
        self._worker.close()

    def abort(self) -> None:
        """Vanish as a killed process would: no cleanup; others reap what we held."""
        if self._worker is not None:
            self._worker.abort()

    def _open_worker(self) -> Worker:
        """The worker of an open connection, or a clear error."""
        worker = self._worker
        if worker is None or worker.state != "open":
            raise ConnectionFailed(f"{self.url}: transport is not connected")
        return worker

    # -- consuming ----------------------------------------------------------
    def subscribe(
        self, queue: str, callback: Callback, *, prefetch: int = 1, exclusive: bool = False
    ) -> Subscription:
        """An exclusive consumer's hold is recorded in the broker file; a process that
        dies holding a queue is reaped (``reap_interval``) and a standby takes over."""
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        subscription = Subscription(
            self._next_subscription_id(), queue, callback, prefetch=prefetch, exclusive=exclusive
        )
        return self._register(subscription)

    def subscribe_broadcast(
        self, topic: str, callback: Callback, *, replay: float = 0.0
    ) -> Subscription:
        subscription = Subscription(
            self._next_subscription_id(), topic, callback, broadcast=True, replay=replay
        )
        return self._register(subscription)

    def keep_broadcasts(self, topic: str, *, seconds: float) -> None:
        worker = self._open_worker()
        done = Confirmation()
        worker.submit(Keep(topic, seconds, done))
        done.result(30)

    def _register(self, subscription: Subscription) -> Subscription:
        worker = self._open_worker()
        done = Confirmation()
        worker.submit(Subscribe(Consumer(subscription), done))
        done.result(30)
        return subscription

    def declare_reply_queue(self, queue: str) -> str:
        """Recorded with this connection's id: closing drops it, and so does whichever
        connection reaps this one if it dies."""
        worker = self._open_worker()
        done = Confirmation()
        worker.submit(DeclareReplyQueue(queue, done))
        done.result(30)
        return queue

    def delete_reply_queue(self, queue: str) -> None:
        worker = self._open_worker()
        done = Confirmation()
        worker.submit(DeleteReplyQueue(queue, done))
        done.result(30)

    def bind_queue(self, queue: str, topic: str, *, expires: float) -> None:
        expires = checked_duration("expires", expires, f"queue {queue!r}", positive=True)
        worker = self._open_worker()
        done = Confirmation()
        worker.submit(Bind(queue, topic, expires, done))
        done.result(30)

    def unsubscribe(self, subscription: Subscription) -> None:
        consumer = self._consumers.get(subscription)
        if consumer is None or not subscription.active or self._worker is None:
            raise TransportError(f"{subscription.describe()} is not subscribed")
        subscription.active = False
        done = Confirmation()
        self._worker.submit(Unsubscribe(consumer, done))
        done.result(30)

    def _take_inflight(self, delivery: Delivery) -> Consumer:
        """Forget ``delivery`` locally, or raise if it is not awaiting settlement."""
        self._open_worker()
        return self._consumers.take_inflight(delivery)

    def _ack(self, delivery: Delivery) -> None:
        worker = self._open_worker()
        self._consumers.take_inflight(delivery)
        worker.submit(Ack(delivery))

    def _nack(self, delivery: Delivery, *, requeue: bool = True, reason: str = "") -> None:
        worker = self._open_worker()
        self._consumers.take_inflight(delivery)
        worker.submit(Nack(delivery, requeue, reason or "rejected"))

    # -- publishing ---------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing], *, ack: Acks = None) -> Confirmation:
        worker = self._open_worker()
        for message in messages:
            self.check_supported(message)
        acks = deliveries_to_ack(ack)
        reserve_all_or_none(acks, self._take_inflight, self._consumers.restore_inflight)
        confirmation = Confirmation()
        worker.submit(Publish(list(messages), acks, confirmation))
        return confirmation

    # -- introspection -------------------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        """Per queue: ready, delayed, in-flight (for `zocalo queues`).

        Dead consumers are reaped first, so what they held counts as ready again;
        a queue with consumers and no messages is listed too.
        """
        if self._worker is not None and self._worker.state == "open":
            reaped = Confirmation()
            self._worker.submit(Reap(reaped))
            reaped.result(30)
        return read_queue_stats(self.path)
