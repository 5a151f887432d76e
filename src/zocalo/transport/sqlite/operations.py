"""What the caller's threads ask of the worker: one small class per kind of request.

The transport queues operations; the worker applies every one queued since
its last batch inside one transaction (group commit), each through
:meth:`Operation.apply`. An operation that needs an answer carries a
:class:`Confirmation`, completed once the transaction has committed (or
failed). If the transaction rolls back, :meth:`Operation.rolled_back` undoes
what the operation did outside the file.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from zocalo.errors import PublishFailed, TransportError
from zocalo.transport.base import report_dropped
from zocalo.transport.messages import Confirmation, Delivery, Outgoing
from zocalo.transport.sqlite.consumers import Consumer, Consumers, may_claim
from zocalo.transport.sqlite.signals import WakeUps
from zocalo.transport.sqlite.store import Store

log = logging.getLogger(__name__)


class Operation:
    """One request for the worker, applied inside its next transaction."""

    __slots__ = ()

    #: Completed once the transaction commits (None: nobody waits for this one).
    future: Confirmation | None = None

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        """Do it in the open transaction; the error to fail its future with, if any."""
        return None

    def rolled_back(self, consumers: Consumers) -> None:
        """The transaction failed: undo what :meth:`apply` changed outside the file."""


class Settle(Operation):
    """An ack or nack: nobody waits for it, so a failed transaction keeps it to retry
    (or its row would stay leased, and renewed, to this connection forever)."""

    __slots__ = ()


@dataclass(slots=True)
class Ack(Settle):
    delivery: Delivery

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        if not store.delete_owned(self.delivery.receipt):
            log.warning(
                "ack of %s came too late: it was already returned to its queue",
                self.delivery.describe(),
            )
        return None


@dataclass(slots=True)
class Nack(Settle):
    delivery: Delivery
    requeue: bool
    reason: str

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        returned = store.return_rows(
            [self.delivery.receipt],
            self.reason,
            holder=store.connection_id,
            dead_letter=not self.requeue,
        )
        if not returned:
            log.warning(
                "nack of %s came too late: it was already returned to its queue",
                self.delivery.describe(),
            )
        for queue_name in returned:
            wake_ups.consumers_of(queue_name)
        return None


@dataclass(slots=True)
class Publish(Operation):
    """Acks and inserts of one publish, all or none (a savepoint in the transaction)."""

    messages: Sequence[Outgoing]
    acks: Sequence[Delivery]
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        store.savepoint()
        for delivery in self.acks:
            if not store.delete_owned(delivery.receipt):
                store.undo_savepoint()
                for other in self.acks:  # still ours: the caller may settle them
                    if other is not delivery:
                        consumers.restore_inflight(other)
                return PublishFailed(
                    f"{delivery.describe()} was returned to its queue before this "
                    "publish (lease expired or connection reaped); nothing was published "
                    "and no input acknowledged"
                )
        message: Outgoing | None = None
        try:
            for message in self.messages:
                if message.broadcast:
                    copies, bound = store.insert_broadcast(message)
                    for address, queue_name in copies:
                        wake_ups.add(address, queue_name)
                    for queue_name in bound:
                        wake_ups.consumers_of(queue_name)
                elif message.droppable and not store.queue_exists(message.destination):
                    report_dropped(message, "the queue does not exist")
                else:
                    store.insert(message)
                    wake_ups.consumers_of(message.destination)
        except sqlite3.DataError as error:  # too large for SQLite: this message's trouble
            failure: Exception = error
        except sqlite3.Error:
            raise  # the file's trouble, not this message's: the batch rolls back and retries
        except Exception as error:  # this message cannot be stored: fail this publish only
            failure = error
        else:
            store.release_savepoint()
            return None
        store.undo_savepoint()
        for delivery in self.acks:
            consumers.restore_inflight(delivery)
        where = f" to {message.describe()}" if message is not None else ""
        return PublishFailed(f"cannot publish{where}: {failure}")

    def rolled_back(self, consumers: Consumers) -> None:
        for delivery in self.acks:
            consumers.restore_inflight(delivery)


@dataclass(slots=True)
class Subscribe(Operation):
    consumer: Consumer
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        self.consumer.register(store)
        consumers.add(self.consumer)
        if not self.consumer.subscription.broadcast:
            may_claim(store, self.consumer)  # an exclusive one holds its queue from now, if it can
        return None

    def rolled_back(self, consumers: Consumers) -> None:
        consumers.remove(self.consumer)  # its row is gone


@dataclass(slots=True)
class Unsubscribe(Operation):
    consumer: Consumer
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        _unregister(store, consumers, wake_ups, self.consumer)
        return None


@dataclass(slots=True)
class Bind(Operation):
    """Copy every broadcast to ``topic`` into ``queue`` (see ``Transport.bind_queue``)."""

    queue: str
    topic: str
    keep_for: float
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        store.bind(self.queue, self.topic, self.keep_for)
        return None


@dataclass(slots=True)
class Keep(Operation):
    """Keep what is broadcast to ``topic`` (see ``Transport.keep_broadcasts``)."""

    topic: str
    seconds: float
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        store.keep(self.topic, self.seconds)
        return None


@dataclass(slots=True)
class DeclareReplyQueue(Operation):
    """Make ``queue`` a reply queue of this connection (see ``Transport.declare_reply_queue``)."""

    queue: str
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        why = store.add_reply_queue(self.queue)
        return None if why is None else TransportError(why)


@dataclass(slots=True)
class DeleteReplyQueue(Operation):
    """Drop this connection's reply queue ``queue`` (see ``Transport.delete_reply_queue``)."""

    queue: str
    future: Confirmation

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        store.drop_reply_queue(self.queue)
        return None


@dataclass(slots=True)
class Reap(Operation):
    """Reap dead connections in this batch (the worker does it for any batch holding one)."""

    future: Confirmation


@dataclass(slots=True)
class Close(Operation):
    """Unregister every consumer and return every row this connection holds."""

    future: Confirmation | None = None

    def apply(self, store: Store, consumers: Consumers, wake_ups: WakeUps) -> BaseException | None:
        for consumer in consumers.all():
            consumer.subscription.active = False
            _unregister(store, consumers, wake_ups, consumer)
        owned = store.rows_owned_by(store.connection_id)
        for queue_name in store.return_rows(owned, "connection closed", holder=store.connection_id):
            wake_ups.consumers_of(queue_name)
        store.drop_reply_queues_of(store.connection_id)  # after the returns that refill them
        return None


def _unregister(store: Store, consumers: Consumers, wake_ups: WakeUps, consumer: Consumer) -> None:
    released = store.remove_consumer(consumer.consumer_id)
    if released is not None:
        wake_ups.consumers_of(released)  # its standbys: one of them takes over
    if consumer.subscription.broadcast:
        store.drop_queue(consumer.queue)
        consumers.remove(consumer)
