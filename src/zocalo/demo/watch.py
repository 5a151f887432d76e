"""What the demo sees of its facility: each image's spots as they are found, and the replies.

The recipe's last step broadcasts each data collection's summary, once it is in the
database, to the topic ``demo.replies``; a queue of this run's own is bound to it,
so no reply is lost while the demo is busy (on RabbitMQ the queue goes away a
minute after the demo stops). The spot finders also broadcast each image's result
to ``demo.progress``, for the live view only.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from zocalo.demo.board import Board
from zocalo.errors import InvalidMessage
from zocalo.recipe.wire import decode
from zocalo.transport.base import Delivery, Transport

REPLY_TOPIC = "demo.replies"
PROGRESS_TOPIC = "demo.progress"
#: Seconds the reply queue outlives its consumer (on brokers that delete it then).
REPLY_QUEUE_EXPIRES = 60.0


@dataclass(frozen=True)
class Reply:
    """A data collection's summary, and when it arrived here."""

    dcid: int
    payload: dict[str, Any]
    arrived_at: float


class Watcher:
    """Collects the replies to this run's requests (and the progress broadcasts)."""

    def __init__(self, transport: Transport, board: Board) -> None:
        self.transport = transport
        self.board = board
        self.queue = f"{REPLY_TOPIC}.{uuid.uuid4().hex[:12]}"
        self.replies: dict[str, Reply] = {}
        #: Replies that came again, by recipe ID.
        self.repeated: dict[str, int] = {}
        #: Replies to recipes this run did not start (a former run's, on a shared broker).
        self.strangers = 0
        self._dcids: dict[str, int] = {}
        self._changed = threading.Condition()

    def start(self) -> None:
        """Listen, before the first request is sent."""
        self.transport.bind_queue(self.queue, REPLY_TOPIC, expires=REPLY_QUEUE_EXPIRES)
        self.transport.subscribe(self.queue, self._reply, prefetch=50)
        self.transport.subscribe_broadcast(PROGRESS_TOPIC, self._progress)

    def expect(self, recipe_id: str, dcid: int) -> None:
        """Recipe ``recipe_id`` processes data collection ``dcid``."""
        with self._changed:
            self._dcids[recipe_id] = dcid

    def _message(self, delivery: Delivery) -> tuple[int | None, str | None, Any]:
        try:
            message = decode(delivery.body, delivery.headers, delivery.describe())
        except InvalidMessage:
            return None, None, None
        recipe_id = message.recipe_id
        with self._changed:
            dcid = self._dcids.get(recipe_id) if recipe_id is not None else None
        return dcid, recipe_id, message.payload

    def _reply(self, delivery: Delivery) -> None:
        dcid, recipe_id, payload = self._message(delivery)
        arrived = time.time()
        with self._changed:
            if dcid is None or recipe_id is None or not isinstance(payload, dict):
                self.strangers += 1
            elif recipe_id in self.replies:
                self.repeated[recipe_id] = self.repeated.get(recipe_id, 0) + 1
            else:
                self.replies[recipe_id] = Reply(dcid, payload, arrived)
                self.board.finished(dcid, bool(payload.get("complete")), payload.get("intensity"))
            self._changed.notify_all()
        self.transport.ack(delivery)

    def _progress(self, delivery: Delivery) -> None:
        dcid, _, payload = self._message(delivery)
        if dcid is None or not isinstance(payload, dict):
            return
        if "jobid" in payload:  # the integration job's submission
            self.board.integrating(dcid, payload["jobid"])
        else:
            self.board.found(dcid, payload.get("image"), int(payload.get("spots", 0)))

    def wait(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` recipes have replied; whether they did in time."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.replies) >= count, timeout)
