"""Publishing with receipts: every SEND is receipted, and a batch's inputs are acked
only once the broker has receipted every message of the batch.

A :meth:`~zocalo.transport.base.Transport.publish` call is one batch: its SEND
frames are written in one go, each asking for a receipt. ActiveMQ answers a
SEND with a receipt once it has taken the message (persisted, for a
persistent one), or with an ERROR frame naming that receipt. When the last
answer of a batch is in, the batch completes: every input it carries is
acked (ACK frames written at once, on each input's own connection), or, if
any message was refused, none is and the confirmation fails with each reason
once, counted. Nothing here waits: answers arrive on stomp.py's receiver
thread, which completes the batch.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from zocalo.errors import ConnectionFailed, PublishFailed
from zocalo.transport.base import Confirmation, Delivery
from zocalo.transport.stomp.connection import Link
from zocalo.transport.stomp.consumers import Consumers, Receipt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """One message as it goes on the wire: STOMP destination, frame headers, body."""

    destination: str
    headers: dict[str, str]
    body: bytes
    #: How errors name it (``queue 'x'``, ``topic 'y'``).
    describe: str


@dataclass(eq=False)
class Batch:
    """One publish call: its messages' answers to wait for, the inputs to ack, its future."""

    future: Confirmation
    acks: list[Delivery]
    remaining: int = 0
    #: (destination, why) of each message the broker did not take.
    failures: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Publisher:
    """Writes batches on ``link`` and settles them as the broker's receipts come in.

    ``settled(receipts)`` tells the consumers which inputs' ACK frames were written.
    """

    def __init__(self, link: Link, consumers: Consumers) -> None:
        self._link = link
        self._consumers = consumers

    def publish(self, messages: list[Prepared], batch: Batch) -> None:
        """Write every message of ``batch`` with a receipt; raise ConnectionFailed (the
        batch failed, its inputs given back) if the connection is not open."""
        if not messages:
            self._complete(batch)
            return
        batch.remaining = len(messages)
        receipts: list[str] = []
        frames = []
        for message in messages:
            receipt = self._link.receipt(self._answer(batch, message.describe))
            receipts.append(receipt)
            headers = {
                **message.headers,
                "destination": message.destination,
                "content-length": str(len(message.body)),
                "receipt": receipt,
            }
            frames.append(("SEND", headers, message.body))
        try:
            self._link.write(frames)
        except ConnectionFailed as error:
            self._link.forget(receipts)
            self.fail(batch, str(error))
            raise

    def _answer(self, batch: Batch, destination: str) -> Callable[[str | None], None]:
        def answered(refusal: str | None) -> None:
            with batch.lock:
                if refusal is not None:
                    batch.failures.append((destination, f"refused by the broker: {refusal}"))
                batch.remaining -= 1
                last = batch.remaining == 0
            if last:
                self._complete(batch)

        return answered

    def _complete(self, batch: Batch) -> None:
        if batch.failures:
            self.fail(batch, _counted(batch.failures))
            return
        receipts: list[Receipt] = [delivery.receipt for delivery in batch.acks]
        # An input whose connection closed meanwhile cannot be acked any more (the
        # broker redelivers it): then none is acked, as for any other failure.
        lost = [
            delivery
            for delivery, receipt in zip(batch.acks, receipts, strict=True)
            if receipt.generation != receipt.consumer.link.generation
            or not receipt.consumer.link.is_open
        ]
        if lost:
            self.fail(
                batch,
                "outputs were published, but the connection of "
                + ", ".join(delivery.describe() for delivery in lost)
                + " closed before it could be acknowledged; no input was acknowledged",
            )
            return
        by_link: dict[Link, list[Receipt]] = {}
        for receipt in receipts:
            by_link.setdefault(receipt.consumer.link, []).append(receipt)
        written: list[Receipt] = []
        try:
            for link, held in by_link.items():
                link.write([("ACK", {"id": receipt.ack}, b"") for receipt in held])
                written.extend(held)
        except ConnectionFailed as error:
            self._consumers.settled(written)
            batch.acks = [d for d in batch.acks if d.receipt not in written]
            self.fail(batch, f"outputs were published, but acknowledging inputs failed: {error}")
            return
        self._consumers.settled(receipts)
        if not batch.future.done():
            batch.future.set_result(None)

    def fail(self, batch: Batch, why: str) -> None:
        """``batch`` failed: no input acked, each given back to be settled again."""
        for delivery in batch.acks:
            self._consumers.untake(delivery)
        if not batch.future.done():
            batch.future.set_exception(PublishFailed(why))


def _counted(failures: list[tuple[str, str]]) -> str:
    """Each distinct failure once, with how many messages it hit."""
    counts = collections.Counter(failures)
    return "; ".join(
        f"{destination} cannot take {f'{count} messages' if count > 1 else 'it'}: {why}"
        for (destination, why), count in counts.items()
    )
