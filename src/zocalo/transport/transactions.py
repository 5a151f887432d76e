"""python-workflows' transactions, emulated on the client once for every transport.

A transaction is a buffer: sends, broadcasts, acks and nacks given its id are
only held, and its commit is one atomic ``publish`` of the held messages
acking every held input, then the held nacks. Nothing is asked of the broker
before the commit, so a transaction costs no round trips of its own (an AMQP
``tx.commit`` is a synchronous round trip, and a channel cannot be in tx and
confirm mode at once; we publish with confirms). Unlike an AMQP transaction, a
commit whose output the broker cannot route fails, and acks nothing.

:class:`zocalo.transport.base.Transport` holds one :class:`OpenTransactions`
and offers the public methods (``transaction_begin`` ...) on top of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from zocalo.errors import PublishFailed, TransportError, ZocaloError
from zocalo.transport.messages import Confirmation, Delivery, Outgoing

log = logging.getLogger(__name__)

#: ``Transport.publish``: publish messages, acking ``ack=`` once all are accepted.
Publish = Callable[..., Confirmation]
#: ``Transport._nack``: return one delivery now (``requeue=``, ``reason=``).
Nack = Callable[..., None]


@dataclass(eq=False)
class Transaction:
    """A client-side transaction: what to do, all at once, on commit."""

    id: int
    messages: list[Outgoing] = field(default_factory=list)
    acks: list[Delivery] = field(default_factory=list)
    #: (delivery, requeue, reason), applied once the publish is confirmed.
    nacks: list[tuple[Delivery, bool, str]] = field(default_factory=list)

    def holds(self, delivery: Delivery) -> bool:
        return any(d is delivery for d in self.acks) or any(d is delivery for d, _, _ in self.nacks)

    def commit(self, publish: Publish, nack: Nack, timeout: float | None) -> None:
        """One ``publish`` of the held messages acking the held inputs, then the held nacks.

        A failed or unconfirmed publish raises :class:`PublishFailed` saying what
        became of the inputs; a nack that fails after the commit is only logged
        (its delivery stays unsettled and comes back, as a requeue asked anyway).
        """
        inputs = len(self.acks)
        try:
            publish(self.messages, ack=self.acks).result(timeout)
        except TimeoutError:
            raise PublishFailed(
                f"transaction {self.id}: the broker did not confirm its "
                f"{len(self.messages)} message(s) within {timeout} s; its {inputs} input(s) "
                "are acknowledged only if it still does"
            ) from None
        except ZocaloError as error:
            raise PublishFailed(
                f"transaction {self.id} failed and acknowledged none of its "
                f"{inputs} input(s): {error}"
            ) from error
        for delivery, requeue, reason in self.nacks:
            try:
                nack(delivery, requeue=requeue, reason=reason)
            except ZocaloError as error:
                log.warning(
                    "transaction %d committed, but its nack of %s failed: %s",
                    self.id,
                    delivery.describe(),
                    error,
                )


class OpenTransactions:
    """The transactions open on one connection, by id (1, 2, ...), under one lock."""

    def __init__(self) -> None:
        self._last_id = 0
        self._open: dict[int, Transaction] = {}
        self._lock = threading.Lock()

    def begin(self) -> int:
        with self._lock:
            self._last_id += 1
            self._open[self._last_id] = Transaction(self._last_id)
            return self._last_id

    def add(self, transaction_id: int, messages: Sequence[Outgoing]) -> None:
        with self._lock:
            self._get(transaction_id).messages.extend(messages)

    def hold_ack(self, transaction_id: int, delivery: Delivery) -> None:
        self._hold(transaction_id, delivery, lambda txn: txn.acks.append(delivery))

    def hold_nack(
        self, transaction_id: int, delivery: Delivery, requeue: bool, reason: str
    ) -> None:
        self._hold(
            transaction_id, delivery, lambda txn: txn.nacks.append((delivery, requeue, reason))
        )

    def end(self, transaction_id: int) -> Transaction:
        """Close the transaction (to commit or drop it): no more can be added to it."""
        with self._lock:
            txn = self._get(transaction_id)
            del self._open[transaction_id]
        return txn

    def _hold(
        self, transaction_id: int, delivery: Delivery, add: Callable[[Transaction], None]
    ) -> None:
        if not delivery.ackable:
            raise TransportError(f"{delivery.describe()} cannot be acknowledged")
        with self._lock:
            txn = self._get(transaction_id)
            if txn.holds(delivery):
                raise TransportError(
                    f"{delivery.describe()} is already settled in transaction {transaction_id}"
                )
            add(txn)

    def _get(self, transaction_id: int) -> Transaction:
        """The open transaction ``transaction_id``, or a clear error (lock held)."""
        txn = self._open.get(transaction_id)
        if txn is None:
            raise TransportError(
                f"transaction {transaction_id!r} is not open on this connection "
                f"(unknown, or already committed or aborted)"
            )
        return txn
