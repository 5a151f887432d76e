"""What running services use, which the plan leaves alone unless ``--force``.

The safety rules of :mod:`~zocalo.rabbitmq_admin.plan` in one place, apart from the
comparing of desired and current state: which broker objects are never the tool's
(a client's temporary queues, built-in exchanges), which belong to the RabbitMQ
transport (its delay topology), and when a queue or exchange is in use (consumers,
messages, a supervisor's command queue, a dead-letter queue of a queue that stays).
:class:`Usage` reads the counts through the management API.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from zocalo.service.commands import COMMAND_QUEUE_PREFIX
from zocalo.transport.rabbitmq import delay as delays

if TYPE_CHECKING:
    from zocalo.rabbitmq_admin.api import ManagementAPI


def temporary_queue(queue: dict[str, Any]) -> bool:
    """A queue a client made for itself (server-named, auto-delete, exclusive): never ours."""
    name = queue.get("name", "")
    return (
        not name
        or name.startswith("amq.")
        or bool(queue.get("auto_delete"))
        or bool(queue.get("exclusive"))
    )


def managed_exchange(name: str) -> bool:
    """Not the default exchange nor a broker built-in (``amq.*``): ours to manage."""
    return bool(name) and not name.startswith("amq.")


def delay_topology(name: str) -> bool:
    """Part of the RabbitMQ transport's own delayed-delivery exchanges and queues."""
    return name.startswith(f"{delays.PREFIX}.")


def why_in_use(queue: dict[str, Any], messages: int | None) -> str | None:
    """Why deleting ``queue`` would hurt a running service (None: it would not)."""
    if str(queue.get("name", "")).startswith(COMMAND_QUEUE_PREFIX):
        return "is a supervisor's command queue (kept while it restarts its worker)"
    reasons = []
    consumers = int(queue.get("consumers") or 0)
    if consumers:
        reasons.append(f"{consumers} consumer{'s' if consumers != 1 else ''}")
    if messages:
        reasons.append(f"{messages} message{'s' if messages != 1 else ''}")
    return "has " + " and ".join(reasons) if reasons else None


def dead_letter_target(
    name: str, current: dict[str, dict[str, Any]], removed: set[str]
) -> str | None:
    """Why dead-letter queue ``name`` is in use: a queue that stays dead-letters to it."""
    for other, queue in current.items():
        if other in removed or other == name:
            continue
        target = (queue.get("arguments") or {}).get("x-dead-letter-routing-key")
        if target == name or (target is None and f"dlq.{other}" == name):
            return f"the dead-letter queue of queue {other}, which stays"
    return None


class Usage:
    """Reads how queues and exchanges are used, through the management API."""

    def __init__(self, api: ManagementAPI, stats_wait: float) -> None:
        self.api = api
        #: How long to wait for the statistics of a queue whose message count is unknown.
        self.stats_wait = stats_wait
        self._deadline: float | None = None

    def routes_to_consumers(self, vhost: str) -> dict[str, str]:
        """Exchanges bound to queues that have consumers (a live subscriber's broadcasts)
        or to a supervisor's command queue, each with why it is in use."""
        consumed = {
            q["name"]: int(q.get("consumers") or 0)
            for q in self.api.queues(vhost)
            if q.get("consumers") or str(q.get("name", "")).startswith(COMMAND_QUEUE_PREFIX)
        }  # a command queue waits for its supervisor's next worker
        queues: dict[str, set[str]] = {}
        for binding in self.api.bindings(vhost):
            destination = binding.get("destination", "")
            if (
                binding.get("source")
                and binding.get("destination_type") == "queue"
                and destination in consumed
            ):
                queues.setdefault(binding["source"], set()).add(destination)
        return {
            source: f"routes to {len(names)} queue{'s' if len(names) != 1 else ''} with consumers"
            for source, names in queues.items()
        }

    def message_count(self, vhost: str, queue: dict[str, Any]) -> int | None:
        """The queue's message count per the management statistics, waiting briefly for them.

        Fresh queues have no statistics for a few seconds; all queues share one deadline.
        """
        if self._deadline is None:
            self._deadline = time.monotonic() + self.stats_wait
        deadline = self._deadline
        while True:
            count = queue.get("messages")
            if count is not None:
                return int(count)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
            refreshed = self.api.get_queue(vhost, queue["name"])
            if refreshed is None:
                return 0
            queue = refreshed

    def deletion_guard(self, vhost: str, queue: dict[str, Any]) -> tuple[str | None, str | None]:
        """(why deleting needs --force, why the queue is in use): either may be None.

        Without ``--force`` a queue in use is kept rather than planned for deletion.
        """
        count = self.message_count(vhost, queue)
        busy = why_in_use(queue, count)
        if count is None:
            return "its message count is not known yet (no management statistics)", busy
        if count:
            return f"holds {count} message{'s' if count != 1 else ''}", busy
        return None, busy
