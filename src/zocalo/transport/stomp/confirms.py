"""Publishing: batches grouped into STOMP transactions, and the acks they release.

ActiveMQ stores a persistent message before it receipts it, one disk sync per
message, so a receipt per SEND caps a connection at a few hundred messages a
second. A transaction is stored as one: its COMMIT is receipted once every
message in it is stored. So publishes are *grouped*: while one transaction's
COMMIT is on its way, the publishes that come meanwhile wait, and then go
together as the next transaction (at most :data:`GROUP_LIMIT` messages). An
idle connection sends a publish at once; a busy one amortises the sync over
the whole group.

Only the COMMIT asks for a receipt: a receipt per SEND would make the broker
write two answers per transaction, and ActiveMQ writes with Nagle's algorithm
on, so the second would wait for our delayed TCP acknowledgement (~40 ms). A
SEND the broker refuses is answered with an ERROR frame naming no receipt:
any such error while a transaction is under way fails every publish of that
transaction (their inputs are not acked; outputs that were taken may arrive
twice after the redelivery). When the COMMIT is receipted, each publish of the
group completes: its inputs are acked (ACK frames, outside the transaction, on
each input's own connection) and its confirmation succeeds. Nothing waits:
answers arrive on stomp.py's receiver thread, which completes the group and
writes the next one.

Droppable messages (replies, see ``Outgoing``) go outside the transaction, each with a
receipt of its own: ActiveMQ refuses a message to a temporary queue that has gone, and
inside a transaction that refusal would fail its COMMIT (see :mod:`.temporary`). A
refused one is dropped, with the one log line, and its publish goes on; a group
completes once its COMMIT and every such receipt are answered, so the drop is logged
before the publish is confirmed. A droppable message is thus sent even if its
transaction then fails (the redelivered input may reply again).

ActiveMQ drops the whole connection of a frame its STOMP codec cannot read (over
1000 headers, or a header line over 10 KiB: a handler's long error in a retry's
headers), taking every delivery and publish on it along: such a message is refused
before anything is sent (:attr:`~.flavour.ActiveMQ.max_header_line`).

RabbitMQ's plugin receipts a COMMIT before the SENDs it holds reach their queues,
so there (:attr:`~.flavour.ActiveMQ.receipted_commits`) a group goes as SENDs
with a receipt each, which RabbitMQ sends once the queue confirmed the message,
and no transaction; a refused one fails the group, as a refused COMMIT does.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from zocalo.errors import ConnectionFailed, PublishFailed
from zocalo.transport.base import Confirmation, Delivery, Outgoing, report_dropped
from zocalo.transport.stomp.connection import Link, WireFrame
from zocalo.transport.stomp.consumers import Consumers, Receipt
from zocalo.transport.stomp.flavour import ActiveMQ, Flavour
from zocalo.transport.stomp.headers import too_long
from zocalo.transport.stomp.temporary import REFUSED_TEMP_QUEUE

log = logging.getLogger(__name__)

#: Messages in one transaction at most (a publish is never split).
GROUP_LIMIT = 500
#: The headers a SEND has besides the message's: destination, content-length, and
#: transaction or receipt.
_FRAME_HEADERS = 3


@dataclass(frozen=True)
class Prepared:
    """One message as it goes on the wire: STOMP destination, frame headers, body."""

    destination: str
    headers: dict[str, str]
    body: bytes
    #: How errors name it (``queue 'x'``, ``topic 'y'``).
    describe: str
    #: The message, when it is droppable: sent outside the transaction, and dropped
    #: (this is what the log line names) if the broker refuses it.
    droppable: Outgoing | None = None


@dataclass(eq=False)
class Batch:
    """One publish call: its messages, the inputs to ack, and its confirmation."""

    future: Confirmation
    acks: list[Delivery]
    messages: list[Prepared] = field(default_factory=list)


@dataclass(eq=False)
class Group:
    """The batches of one transaction, and the broker's error while it was under way."""

    batches: list[Batch]
    error: str | None = None
    #: The COMMIT's refusal (None: committed, or not answered yet).
    refusal: str | None = None
    #: Answers still to come: the COMMIT's (without transactions, each SEND's) and each
    #: droppable message's receipt.
    unanswered: int = 1


class Publisher:
    """Writes batches on ``link`` as grouped transactions and settles them on the COMMIT's
    receipt; ``consumers`` are told which inputs' ACK frames were written."""

    def __init__(
        self, link: Link, consumers: Consumers, flavour: Callable[[], Flavour] = ActiveMQ
    ) -> None:
        self._link = link
        self._consumers = consumers
        #: The broker's flavour (known once connected): the headers every frame naming
        #: a destination carries, and whether a COMMIT's receipt confirms its SENDs.
        self._flavour = flavour
        self._lock = threading.Lock()
        self._committing: Group | None = None
        self._waiting: collections.deque[Batch] = collections.deque()
        self._ids = itertools.count(1)

    def publish(self, messages: list[Prepared], batch: Batch) -> None:
        """Send ``batch`` now, or with the next group if a COMMIT is under way; raise
        ConnectionFailed if not connected, PublishFailed if a message cannot go (the
        batch failed, its inputs given back, nothing sent)."""
        if not messages:
            self._complete(batch)
            return
        batch.messages = messages
        unreadable = self._unreadable(messages)
        if unreadable is not None:
            self.fail(batch, unreadable)
            raise PublishFailed(unreadable)
        with self._lock:
            if self._committing is not None:
                self._waiting.append(batch)
                return
            group = self._committing = Group([batch])
        self._send_group(group, raise_lost=True)

    def _unreadable(self, messages: list[Prepared]) -> str | None:
        """Why the broker could not read the frame of one of ``messages`` (ActiveMQ
        drops the connection of such a frame, with every delivery and publish on it)."""
        flavour = self._flavour()
        for message in messages:
            why = None
            count = len(message.headers) + _FRAME_HEADERS
            if flavour.max_headers is not None and count > flavour.max_headers:
                why = f"{count} headers in its frame (at most {flavour.max_headers})"
            elif flavour.max_header_line is not None:
                longest = too_long(message.headers, flavour.max_header_line)
                if longest is not None:
                    name, size = longest
                    why = f"header {name!r} is {size} bytes (at most {flavour.max_header_line})"
            if why is not None:
                return f"{message.describe}: not published: {why}, more than {flavour.name} reads"
        return None

    def _send_group(self, group: Group, *, raise_lost: bool = False) -> None:
        transactions = self._flavour().receipted_commits
        transaction = f"zocalo-{self._link.generation}-{next(self._ids)}"
        loose: list[WireFrame] = []
        frames: list[WireFrame] = []
        receipts: list[str] = []
        for batch in group.batches:
            for message in batch.messages:
                headers = {
                    **message.headers,
                    **self._flavour().queue_arguments(message.destination),
                    "destination": message.destination,
                    "content-length": str(len(message.body)),
                }
                if message.droppable is None and transactions:
                    frames.append(("SEND", {**headers, "transaction": transaction}, message.body))
                    continue
                if message.droppable is None:  # its refusal fails the group
                    answer = functools.partial(self._answered, group, decides=True)
                else:
                    answer = functools.partial(self._sent_or_dropped, group, message.droppable)
                receipts.append(self._link.receipt(answer))
                loose.append(("SEND", {**headers, "receipt": receipts[-1]}, message.body))
        group.unanswered = len(loose)
        if transactions:
            group.unanswered += 1
            commit = self._link.receipt(functools.partial(self._answered, group, decides=True))
            receipts.append(commit)
            frames.insert(0, ("BEGIN", {"transaction": transaction}, b""))
            frames.append(("COMMIT", {"transaction": transaction, "receipt": commit}, b""))
        try:
            self._link.write(loose + frames)
        except ConnectionFailed as error:
            self._link.forget(receipts)
            self._committed(group, str(error))
            if raise_lost:
                raise

    def _sent_or_dropped(self, group: Group, message: Outgoing, refusal: str | None) -> None:
        """A droppable message's receipt: refused while connected means its queue is gone."""
        if refusal is not None and self._link.is_open:
            why = (
                "the queue does not exist"
                if refusal.startswith(REFUSED_TEMP_QUEUE)  # all ActiveMQ says of it
                else f"ActiveMQ refused it: {refusal}"
            )
            report_dropped(message, why)
        self._answered(group, None)

    def _answered(self, group: Group, refusal: str | None, *, decides: bool = False) -> None:
        """One answer of the group's: once the last is in, the group is settled.
        ``decides``: the COMMIT's (or, without transactions, a SEND's), whose refusal
        fails the group."""
        with self._lock:
            if decides and group.refusal is None:
                group.refusal = refusal
            group.unanswered -= 1
            last = group.unanswered == 0
        if last:
            self._committed(group, group.refusal)

    def refused(self, error: str) -> None:
        """On the receiver thread: the broker sent an ERROR naming no receipt. A SEND
        of the transaction under way may have been refused: it fails as a whole.
        Without transactions every SEND asks for a receipt, so such an error is about
        something else (RabbitMQ's plugin answers what it still delivered to a
        subscription that has gone with one each): no publish fails for it."""
        if not self._flavour().receipted_commits:
            return
        with self._lock:
            group = self._committing
            if group is not None and group.error is None:
                group.error = error

    def _committed(self, group: Group, refusal: str | None) -> None:
        """The group's COMMIT was answered: settle its batches, then send the next group."""
        why = refusal or group.error
        if why is None:
            self._complete(*group.batches)
        else:
            for batch in group.batches:
                self.fail(batch, _failed(batch, why))
        with self._lock:
            if not self._waiting or not self._link.is_open:
                self._committing = None
                lost = list(self._waiting)
                self._waiting.clear()
                group = Group([])
            else:
                lost, size = [], 0
                group = self._committing = Group([])
                while self._waiting and (
                    not group.batches or size + len(self._waiting[0].messages) <= GROUP_LIMIT
                ):
                    batch = self._waiting.popleft()
                    group.batches.append(batch)
                    size += len(batch.messages)
        for batch in lost:
            self.fail(batch, f"{self._link.safe_url}: the connection was lost before it was sent")
        if group.batches:
            self._send_group(group)

    def _complete(self, *batches: Batch) -> None:
        """Every message of ``batches`` is with the broker: ack their inputs (one write
        per connection for all of them), then confirm each batch."""
        ready: list[Batch] = []
        for batch in batches:
            # An input whose connection closed meanwhile cannot be acked any more (the
            # broker redelivers it): then none of its batch is, as for any failure.
            lost = [
                delivery
                for delivery in batch.acks
                if delivery.receipt.generation != delivery.receipt.consumer.link.generation
                or not delivery.receipt.consumer.link.is_open
            ]
            if lost:
                self.fail(
                    batch,
                    "outputs were published, but the connection of "
                    + ", ".join(delivery.describe() for delivery in lost)
                    + " closed before it could be acknowledged; no input was acknowledged",
                )
            else:
                ready.append(batch)
        by_link: dict[Link, list[Batch]] = {}
        for batch in ready:
            for link in dict.fromkeys(d.receipt.consumer.link for d in batch.acks):
                by_link.setdefault(link, []).append(batch)
        failed: dict[Batch, str] = {}
        acked: set[Link] = set()
        for link, held in by_link.items():
            receipts: list[Receipt] = [
                d.receipt for batch in held for d in batch.acks if d.receipt.consumer.link is link
            ]
            try:
                link.write([("ACK", {"id": receipt.ack}, b"") for receipt in receipts])
            except ConnectionFailed as error:
                for batch in held:
                    failed.setdefault(batch, f"outputs were published, but acking failed: {error}")
                continue
            acked.add(link)
            self._consumers.settled(receipts)
        for batch in ready:
            if batch in failed:
                # Inputs on another connection were acked: settled, not given back.
                batch.acks = [d for d in batch.acks if d.receipt.consumer.link not in acked]
                self.fail(batch, failed[batch])
            elif not batch.future.done():
                batch.future.set_result(None)

    def fail(self, batch: Batch, why: str) -> None:
        """``batch`` failed: no input acked, each given back to be settled again."""
        for delivery in batch.acks:
            self._consumers.untake(delivery)
        if not batch.future.done():
            batch.future.set_exception(PublishFailed(why))


def _failed(batch: Batch, why: str) -> str:
    """Why ``batch`` failed, naming each destination once, with how many messages."""
    counts = collections.Counter(message.describe for message in batch.messages)
    destinations = ", ".join(
        f"{destination} ({count} messages)" if count > 1 else destination
        for destination, count in counts.items()
    )
    return f"{destinations}: not published: {why}"
