"""Retries: a handler that raised gets its message again later, after a growing delay.

The message is re-published to its own queue with the attempt count and the
reason in its headers (and the reason added to its history), after
``RunnerSettings.delay_before(attempt)``, and the original acked in the same
atomic publish. Passed on to the next hook (by default, dead-lettering): the
last attempt (``max_attempts``), invalid input (undecodable, or an
:class:`~zocalo.errors.InvalidMessage` from the handler: retrying cannot help)
and broadcasts (no queue to come back to). Re-publishing leaves out the broker's
own headers (see :func:`~zocalo.transport.dead_letters.without_broker_headers`).
"""

from __future__ import annotations

from zocalo.errors import InvalidMessage
from zocalo.service.middleware.base import ATTEMPT_HEADER, RETRIED, InHand, Middleware, Runner
from zocalo.transport.base import Capability, Outgoing
from zocalo.transport.dead_letters import (
    DLQ_HISTORY_HEADER,
    runner_entry,
    with_history,
    without_broker_headers,
)

#: Why the last attempt failed, in a re-published message.
RETRY_REASON_HEADER = "zocalo-retry-reason"


class Retries(Middleware):
    """Re-publish a failed message with a growing delay until its attempts run out."""

    def on_failure(self, runner: Runner, message: InHand, error: Exception) -> str | None:
        delivery = message.delivery
        attempt = message.attempt
        if (
            message.step is None
            or isinstance(error, InvalidMessage)
            or not delivery.ackable
            or attempt >= runner.settings.max_attempts_of(message.spec)
        ):
            return None
        reason = message.reason(error)
        headers = without_broker_headers(delivery.headers)
        headers[ATTEMPT_HEADER] = attempt
        headers[RETRY_REASON_HEADER] = reason
        headers[DLQ_HISTORY_HEADER] = with_history(delivery.headers, runner_entry(reason))
        delay: float | None = runner.settings.delay_before(attempt)
        if Capability.DELAY not in runner.transport.capabilities:
            delay = None
        runner.stats.add("retried")
        runner.settle(delivery, [Outgoing(delivery.source, delivery.body, headers, delay=delay)])
        return RETRIED
