"""Where a message goes on ActiveMQ: destinations, and the headers that route it.

A queue ``q`` is ``/queue/<prefix>.q`` and a topic ``t`` is ``/topic/<prefix>.t``,
as python-workflows names them, so a service of ours and one of theirs meet on
one broker. ActiveMQ creates a destination on first use: nothing is declared.

Dead letters: ActiveMQ's individual dead-letter strategy (python-zocalo's
deployments, and the place Schlockmeister and the dead-letter tools look) puts
those of ``/queue/<prefix>.q`` into ``/queue/DLQ.<prefix>.q``. Our
``dlq.q`` (:func:`~zocalo.transport.dead_letters.dlq_name`) is that queue, so
what we dead-letter and what the broker dead-letters land in one place.

Reply queues are temporary queues (:mod:`.temporary`): the owner consumes
``/temp-queue/<prefix>.<name>``, everyone else sends to its address
``zocalo.reply.<id>``, which is ``/remote-temp-queue/<id>``.

Delays are ActiveMQ's scheduler (``AMQ_SCHEDULED_DELAY``, ms; the broker needs
``schedulerSupport="true"``), expiry the absolute ``expires`` (epoch ms), and
priority the JMS priority 0-9 (ordered only where the broker's destination
policy has ``prioritizedMessages="true"``). Queue messages are persistent.
"""

from __future__ import annotations

import time

from zocalo.errors import UnsupportedFeature
from zocalo.transport.base import Outgoing
from zocalo.transport.stomp.flavour import ActiveMQ, Flavour
from zocalo.transport.stomp.temporary import TEMP_QUEUE, remote_destination

#: The dead-letter queue prefix of ActiveMQ's individual dead-letter strategy.
BROKER_DLQ_PREFIX = "DLQ."
#: Where every dead-letter queue's destination starts.
DEAD_LETTER_QUEUES = f"/queue/{BROKER_DLQ_PREFIX}"
_OUR_DLQ_PREFIX = "dlq."
#: ActiveMQ's wildcards and composite separator: a name holding one would
#: consume (or send to) more than the one destination it names.
_WILDCARDS = frozenset("*>,")
LOWEST_PRIORITY, HIGHEST_PRIORITY = 0, 9


class Destinations:
    """Our queue and topic names as STOMP destinations under one prefix, and back."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._namespace = f"{prefix}." if prefix else ""

    def queue(self, name: str) -> str:
        _check(name)
        if (remote := remote_destination(name)) is not None:
            return remote
        if name.startswith(_OUR_DLQ_PREFIX):
            return f"/queue/{BROKER_DLQ_PREFIX}{self._namespace}{name[len(_OUR_DLQ_PREFIX) :]}"
        return f"/queue/{self._namespace}{name}"

    def temporary(self, name: str) -> str:
        """The temporary queue ``name`` of the connection that names it (a reply queue)."""
        _check(name)
        return f"{TEMP_QUEUE}{self._namespace}{name}"

    def topic(self, name: str) -> str:
        _check(name)
        return f"/topic/{self._namespace}{name}"

    def of(self, message: Outgoing) -> str:
        name = message.destination
        return self.topic(name) if message.broadcast else self.queue(name)

    def every_queue(self) -> list[str]:
        """Wildcard destinations matching every queue under the prefix and every
        dead-letter queue of one (all queues without a prefix)."""
        if not self._namespace:
            return ["/queue/>"]
        return [f"/queue/{self._namespace}>", *self.every_dead_letter_queue()]

    def every_dead_letter_queue(self) -> list[str]:
        """A wildcard destination matching the dead-letter queue of every queue under
        the prefix."""
        return [f"/queue/{BROKER_DLQ_PREFIX}{self._namespace}>"]

    def name_of(self, destination: str) -> tuple[str, bool] | None:
        """Our name of the queue or topic ``destination``, and whether it is a topic
        (None: not one under our prefix)."""
        if destination.startswith("/topic/"):
            name = destination[len("/topic/") :]
            if name.startswith(self._namespace) and len(name) > len(self._namespace):
                return name[len(self._namespace) :], True
            return None
        queue = self.queue_name(destination)
        return (queue, False) if queue else None

    def queue_name(self, destination: str) -> str | None:
        """Our name of the queue ``/queue/...`` (None: not a queue under our prefix)."""
        if not destination.startswith("/queue/"):
            return None
        name = destination[len("/queue/") :]
        dead = name.startswith(BROKER_DLQ_PREFIX)
        if dead:
            name = name[len(BROKER_DLQ_PREFIX) :]
        if not name.startswith(self._namespace):
            return None
        name = name[len(self._namespace) :]
        return f"{_OUR_DLQ_PREFIX}{name}" if dead else name


def routing_headers(
    message: Outgoing, flavour: Flavour | None = None, now: float | None = None
) -> dict[str, str]:
    """The STOMP headers that carry a message's delay, expiry, priority and persistence
    on ``flavour``'s broker (ActiveMQ's by default)."""
    flavour = flavour or ActiveMQ()
    headers: dict[str, str] = {}
    if not message.broadcast:
        headers["persistent"] = "true"
    if message.delay:
        headers["AMQ_SCHEDULED_DELAY"] = str(max(0, round(message.delay * 1000)))
    if message.expiration is not None:
        headers.update(flavour.expiry(message.expiration, time.time() if now is None else now))
    if not message.broadcast:
        # Unset is the lowest, as on every transport (python-workflows sends none,
        # which ActiveMQ takes as its default, 4).
        priority = LOWEST_PRIORITY if message.priority is None else message.priority
        if not LOWEST_PRIORITY <= priority <= HIGHEST_PRIORITY or int(priority) != priority:
            raise UnsupportedFeature(
                f"ActiveMQ priorities are whole numbers from {LOWEST_PRIORITY} to "
                f"{HIGHEST_PRIORITY}: cannot honour priority={priority!r} for {message.describe()}"
            )
        headers["priority"] = str(int(priority))
    return headers


def _check(name: str) -> None:
    if not name or _WILDCARDS.intersection(name) or name != name.strip():
        raise UnsupportedFeature(
            f"{name!r} cannot be an ActiveMQ destination name: empty, surrounding spaces, "
            "or one of * > , (wildcards and composite destinations)"
        )
