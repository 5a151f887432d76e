"""Dead-lettering: a message that cannot be handled moves to ``dlq.<queue>`` with why and where.

Invalid input (undecodable, unroutable) comes here at once; a failing handler's
message once its retries are spent. The dead letter keeps the body and the
headers (less the broker's own), adds the reason, the queue, the history and,
for a recipe message, the recipe path, and the original is acked in the same
atomic publish. ``dlq.<queue>`` is declared first: a queue an operator
declared may have none.
"""

from __future__ import annotations

import logging

from zocalo.errors import ConnectionFailed, InvalidMessage, ZocaloError
from zocalo.service.middleware.base import DEAD_LETTERED, FAILED, InHand, Middleware, Runner
from zocalo.transport.base import Delivery, Outgoing
from zocalo.transport.dead_letters import (
    dead_letter_headers,
    dlq_name,
    runner_entry,
    with_history,
)

log = logging.getLogger("zocalo.service.middleware.dead_letter")

#: Where in its recipe a dead-lettered recipe message was: its path and its step.
RECIPE_PATH_HEADER = "zocalo-recipe-path"


class DeadLetter(Middleware):
    """Move what nothing else settled to ``dlq.<queue>``, acking the original."""

    def on_failure(self, runner: Runner, message: InHand, error: Exception) -> str | None:
        delivery, step = message.delivery, message.step
        if step is None:
            reason, path = message.reason(error), None
        elif not delivery.ackable:
            return None  # a broadcast whose handler failed: nothing to move
        else:
            reason = message.reason(error)
            if not isinstance(error, InvalidMessage):  # refused by its handler: never retried
                reason += f" (after {message.attempt} attempts)"
            path = [*step.path, step.pointer] if step.pointer is not None else None
        log.error("dead-lettering %s: %s", delivery.describe(), reason)
        if not delivery.ackable:  # an invalid broadcast: nothing to move, counted
            runner.stats.add("dead_lettered")
            return DEAD_LETTERED
        if not self._queue_exists(runner, delivery):
            return FAILED
        headers = dead_letter_headers(
            delivery.headers,
            reason=reason,
            queue=delivery.source,
            history=with_history(delivery.headers, runner_entry(reason)),
        )
        if path is not None:
            headers[RECIPE_PATH_HEADER] = path
        runner.stats.add("dead_lettered")
        runner.settle(delivery, [Outgoing(dlq_name(delivery.source), delivery.body, headers)])
        return DEAD_LETTERED

    @staticmethod
    def _queue_exists(runner: Runner, delivery: Delivery) -> bool:
        """Declare ``dlq.<queue>``, or stop the service.

        A dead letter the broker cannot route would return its message to the
        queue at once, to fail and be dead-lettered again: a hot loop. A broker
        refusing the declaration is a setup error: the service stops with a
        clear line and the message goes back to its queue.
        """
        target = dlq_name(delivery.source)
        try:
            runner.transport.declare_queue(target)
        except ConnectionFailed:
            pass  # the publish fails as well, and the message comes back after a reconnect
        except ZocaloError as error:
            log.error(
                "cannot dead-letter %s: its dead-letter queue %r cannot be declared (%s); "
                "stopping the service, the message goes back to its queue",
                delivery.describe(),
                target,
                error,
            )
            runner.give_back(delivery, str(error))
            # An error, not a stop: the worker exits non-zero and its supervisor restarts it.
            runner.stop_with_error(f"dead-letter queue {target!r} cannot be declared: {error}")
            return False
        return True
