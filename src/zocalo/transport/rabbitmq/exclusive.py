"""One active consumer per queue on RabbitMQ: the lock, and who stands by.

RabbitMQ's own ``basic.consume(exclusive=True)`` is enforced by classic queues
only: a quorum queue (ours) accepts a second exclusive consumer and shares its
messages, and ``x-single-active-consumer`` cannot be added to a queue that
exists. So an exclusive subscription first takes the queue's *lock*: a queue
``zocalo.exclusive.<queue>`` declared exclusive to this connection. Only one
connection can hold it (another's declaration is refused, RESOURCE_LOCKED), and
RabbitMQ deletes it when that connection closes or is lost (``kill -9``
included), so a dead holder never keeps it. Holding the lock, the subscription
consumes only if the queue has no consumer (a python-zocalo JSONLines consuming
exclusively, or plain consumers: it waits until they have gone), and then still
with ``exclusive`` set, which a classic queue enforces against everyone else.

A plain subscription first looks for the lock (a passive declaration): held, it
stands by too (absent, or the user may not look, it consumes). Declaring a lock
needs the ``configure`` permission on ``zocalo.exclusive.*``. Whoever stands by
tries again on a fresh channel of its own after a growing pause; a refusal closes
only that channel, which never had a delivery, so nothing is lost or duplicated
and the connection's other channels are untouched.
"""

from __future__ import annotations

import logging

import pika.exceptions

#: The lock of queue Q is the queue ``LOCK_PREFIX + Q``, exclusive to its holder.
LOCK_PREFIX = "zocalo.exclusive."

#: Bounds of the pause before a standing-by subscription tries again (seconds).
STANDBY_FIRST_DELAY, STANDBY_MAX_DELAY = 0.1, 2.0

#: AMQP reply codes: a queue exclusive to another connection; a consumer refused
#: (another's exclusivity, or permissions).
RESOURCE_LOCKED, ACCESS_REFUSED = 405, 403


class QuietRefusals(logging.Filter):
    """Leaves out pika's warning for each channel the broker closed over a lock, or for
    another's exclusive consumer: a standby's tries (every few seconds while it waits)
    would flood the log that its one line and its ``took over`` line tell enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return LOCK_PREFIX not in message and "in exclusive use" not in message


QUIET_REFUSALS = QuietRefusals()
logging.getLogger("pika.channel").addFilter(QUIET_REFUSALS)


def lock_name(queue: str) -> str:
    return LOCK_PREFIX + queue


def reply_text(reason: BaseException) -> str:
    """What the broker said when it closed a channel."""
    return str(getattr(reason, "reply_text", reason))


def _closed_with(reason: BaseException, code: int) -> bool:
    return isinstance(reason, pika.exceptions.ChannelClosedByBroker) and reason.reply_code == code


def held_by_another(reason: BaseException) -> bool:
    """The channel closed because another consumer holds the queue: another connection
    holds its lock, or a classic queue refused the consumer for an exclusive one (not
    for a lack of permissions, also ACCESS_REFUSED)."""
    return _closed_with(reason, RESOURCE_LOCKED) or (
        _closed_with(reason, ACCESS_REFUSED) and "in exclusive use" in reply_text(reason)
    )


def next_delay(delay: float) -> float:
    """The pause before the next try of a standby that last waited ``delay`` (0: first)."""
    return min(STANDBY_MAX_DELAY, delay * 2) if delay else STANDBY_FIRST_DELAY
