"""``zocalo.dlq_purge``: move dead letters from their queues to files, losing none.

Each message is written to its file (see :mod:`zocalo.dlq.files`), the file and its
directory fsynced, and only then acknowledged, with a confirmed acknowledgement
(``publish([], ack=delivery)``): a purge killed at any moment leaves every message
either on disk or back in its queue (or both, and a second purge then finds the file
already there instead of writing it twice).

It stops once no message has come for a while, as python-zocalo's does: 3 s before the
first, 0.1 s between the others, or ``wait`` for both.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from pathlib import Path

from zocalo.dlq.errors import DeadLetterError
from zocalo.dlq.files import Exported, export
from zocalo.transport.base import Delivery, Subscription, Transport

#: python-zocalo's waits for the first message, and between later ones (seconds).
FIRST_WAIT = 3.0
IDLE_WAIT = 0.1
#: Deliveries held at once: enough that the next is always at hand.
PREFETCH = 20


def purge(
    transport: Transport,
    queues: Sequence[str],
    location: Path,
    *,
    wait: float | None = None,
    on_export: Callable[[Exported], None] | None = None,
    timeout: float = 30.0,
) -> list[Exported]:
    """Export every message of ``queues`` under ``location``; what was exported, in order.

    ``transport`` is connected; the queues exist (see
    :meth:`~zocalo.dlq.listing.QueueListing.require`). A file that cannot be written
    stops the purge with :class:`DeadLetterError`: that message is not acknowledged.
    """
    arrived: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    subscriptions: list[Subscription] = []
    exported: list[Exported] = []
    try:
        for name in queues:
            subscriptions.append(transport.subscribe(name, arrived.put, prefetch=PREFETCH))
        patience = FIRST_WAIT if wait is None else wait
        while True:
            try:
                delivery = arrived.get(timeout=patience)
            except queue.Empty:
                break
            patience = IDLE_WAIT if wait is None else wait
            done = _export_one(transport, delivery, location, timeout)
            exported.append(done)
            if on_export is not None:
                on_export(done)
    finally:
        for subscription in subscriptions:
            transport.unsubscribe(subscription)
    return exported


def _export_one(
    transport: Transport, delivery: Delivery, location: Path, timeout: float
) -> Exported:
    """Write ``delivery`` to disk, then acknowledge it (and wait until that is done)."""
    try:
        done = export(
            location,
            delivery.source,
            delivery.headers,
            delivery.body,
            delivery.message_id,
            redelivered=delivery.redelivered,
        )
    except OSError as error:
        where = error.filename or location
        raise DeadLetterError(
            f"cannot write {delivery.describe()} under {location} ({where}: {error.strerror}); "
            "it stays in its queue"
        ) from None
    transport.publish([], ack=delivery).result(timeout)
    return done
