"""Which queues a broker has and how many messages each holds, whatever the broker.

The embedded broker (and the in-memory one) answer through the transport contract
(:meth:`~zocalo.transport.base.Transport.queue_stats`); ActiveMQ, which tells a STOMP
client no depths by state, has its queues browsed (those that hold messages: see
:mod:`zocalo.transport.stomp.browse`); AMQP cannot list queues, so a
RabbitMQ vhost is listed through the management API (:mod:`zocalo.rabbitmq_admin`).
The tools ask a :class:`QueueListing` and never which broker it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zocalo.dlq.errors import NoSuchQueue
from zocalo.transport.base import QueueStats, Transport
from zocalo.transport.dead_letters import dlq_name
from zocalo.transport.registry import redact_url
from zocalo.transport.stomp import StompTransport

if TYPE_CHECKING:
    from zocalo.rabbitmq_admin.endpoints import ManagementTarget

QueueLister = Callable[[], list[QueueStats]]
DLQ_PREFIX = "dlq."
_RABBITMQ_SCHEMES = ("amqp", "amqps")
_ACTIVEMQ_SCHEMES = ("stomp",)


@dataclass
class QueueListing:
    """The queues of one broker (a RabbitMQ vhost, an embedded broker file).

    ``lists_empty``: whether a queue that exists but holds nothing is listed (RabbitMQ);
    the embedded broker lists only queues that hold messages or have consumers, as its
    queues exist only through them.
    """

    broker: str
    list_queues: QueueLister
    lists_empty: bool = False
    #: Why a queue the broker may have is not listed (said when one is required).
    unlisted: str = "it holds no messages and has no consumers"
    #: The ``dlq.*`` queues alone, where that costs the broker less than every queue
    #: (ActiveMQ, whose queues are browsed); None: taken from ``list_queues``.
    list_dead_letter_queues: QueueLister | None = field(default=None, repr=False)
    #: Only queues whose name (after ``dlq.``) starts with ``<namespace>.``; None: all.
    namespace: str | None = None
    _close: Callable[[], None] = field(default=lambda: None, repr=False)

    def queues(self, *, dead_letters_only: bool = False) -> dict[str, QueueStats]:
        """Every queue (or at least every ``dlq.*`` one), by name."""
        lister = self.list_queues
        if dead_letters_only and self.list_dead_letter_queues is not None:
            lister = self.list_dead_letter_queues
        return {stats.queue: stats for stats in lister() if self._wanted(stats.queue)}

    def _wanted(self, name: str) -> bool:
        if self.namespace is None:
            return True
        return name.removeprefix(DLQ_PREFIX).startswith(f"{self.namespace}.")

    def dead_letter_queues(self) -> dict[str, int]:
        """Every ``dlq.*`` queue and the messages it holds (ready, delayed or in flight)."""
        return {
            name: stats.ready + stats.delayed + stats.in_flight
            for name, stats in sorted(self.queues(dead_letters_only=True).items())
            if name.startswith(DLQ_PREFIX)
        }

    def require(self, names: Iterable[str]) -> None:
        """Raise :class:`NoSuchQueue` naming every one of ``names`` the broker lacks."""
        names = list(names)
        # Never browsed by name: on ActiveMQ a browser would create a missing queue.
        present = self.queues(dead_letters_only=all(n.startswith(DLQ_PREFIX) for n in names))
        missing = [name for name in names if name not in present]
        if not missing:
            return
        why = "" if self.lists_empty else f" ({self.unlisted})"
        listed = ", ".join(missing)
        raise NoSuchQueue(f"no queue {listed} on {self.broker}{why}")

    def close(self) -> None:
        self._close()

    def __enter__(self) -> QueueListing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dead_letter_queue_names(names: Iterable[str]) -> list[str]:
    """Queue names as the dead-letter tools take them: ``x`` and ``dlq.x`` both mean ``dlq.x``."""
    return list(dict.fromkeys(dlq_name(name) for name in names))


def is_rabbitmq(url: str) -> bool:
    return url.partition("://")[0].lower() in _RABBITMQ_SCHEMES


def is_activemq(url: str) -> bool:
    return url.partition("://")[0].lower() in _ACTIVEMQ_SCHEMES


def queue_listing(
    url: str,
    transport: Transport | None = None,
    *,
    management_url: str | None = None,
    rabbitmq_api: Any = None,
    namespace: str | None = None,
) -> QueueListing:
    """The listing of the broker at ``url``.

    RabbitMQ: the management API (``management_url``, else the site configuration's
    ``rabbitmqapi`` section given as ``rabbitmq_api``, else the AMQP host's port 15672),
    for the URL's vhost, or the vhost ``namespace`` (as python-zocalo's ``-n``). Any
    other broker answers itself through ``transport`` (connected), ``namespace`` then
    being a queue name prefix (as for python-zocalo on ActiveMQ).
    """
    if is_rabbitmq(url):
        from zocalo.rabbitmq_admin.endpoints import management_target

        target = management_target(url, management_url, rabbitmq_api)
        vhost = namespace or target.vhost
        tried = ", ".join(redact_url(base) for base in target.base_urls)
        return QueueListing(
            f"vhost {vhost!r} (management API {tried})",
            lambda: _vhost_queues(target, vhost),
            lists_empty=True,
        )
    if transport is None:
        raise ValueError(f"listing the queues of {redact_url(url)} needs a connected transport")
    if isinstance(transport, StompTransport):
        return QueueListing(
            redact_url(url),
            transport.browsed_queue_stats,
            namespace=namespace,
            unlisted="it holds no messages: ActiveMQ's queues are listed by browsing them",
            list_dead_letter_queues=lambda: transport.browsed_queue_stats(dead_letters_only=True),
        )
    return QueueListing(redact_url(url), transport.queue_stats, namespace=namespace)


def _vhost_queues(target: ManagementTarget, vhost: str) -> list[QueueStats]:
    """The queues of ``vhost`` from the first of ``target``'s APIs that answers now: a
    long-lived listing (Schlockmeister's) fails over each time, and holds no connection."""
    from zocalo.rabbitmq_admin.queues import queue_stats

    api = target.connect()
    try:
        return queue_stats(api, vhost)
    finally:
        api.close()
