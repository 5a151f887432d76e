"""Reply queues on ActiveMQ: temporary queues, and the name others reach them by.

A STOMP connection to ActiveMQ Classic has temporary queues of its own:
``/temp-queue/<name>`` is made the first time a frame of that connection names
it, is private to it (another connection naming ``/temp-queue/<name>`` gets one
of its own), and is deleted, with what it holds, when the connection closes or
dies. Others reach it as ``/remote-temp-queue/<id>``, ``<id>`` being the
broker's: the connection's id (the ``session`` header of its CONNECTED frame,
when it gave no ``client-id``), a colon, and the queue's number on that
connection, counting from 1 in the order the connection first named its
temporary queues (ActiveMQ's ``ProtocolConverter.createTempDestination``).
The broker never tells the owner that id (it maps its own temporary queues back
to ``/temp-queue/<name>`` in every frame it sends it), so :class:`Numbering`
counts as the broker does, over every frame written on the connection.

Our name for the address is ``zocalo.reply.<id>`` (:data:`REPLY_QUEUE_PREFIX`):
on ActiveMQ every queue name of that form is a temporary queue, so a reply never
makes a lasting queue, whoever sends it.

A message sent to a temporary queue that no longer exists (or never did) is
refused: an ERROR frame, ``DestinationDoesNotExistException``, whose message
names only the destination. Inside a transaction it also marks the transaction
rollback-only, and its COMMIT fails: so droppable messages are sent outside
the transaction (see :mod:`.confirms`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from zocalo.transport.base import REPLY_QUEUE_PREFIX

#: A temporary queue of the connection writing the frame.
TEMP_QUEUE = "/temp-queue/"
#: A temporary queue of any connection, by the broker's id for it.
REMOTE_TEMP_QUEUE = "/remote-temp-queue/"
#: How ActiveMQ names a temporary queue in the message of an error about it.
REFUSED_TEMP_QUEUE = "temp-queue://"
#: The headers whose destinations ActiveMQ converts (a temporary queue named in
#: either is made there and then).
_DESTINATION_HEADERS = ("destination", "reply-to")


def remote_destination(name: str) -> str | None:
    """The STOMP destination of a reply queue's address ``zocalo.reply.<id>``; None for
    a name of any other form."""
    if not name.startswith(REPLY_QUEUE_PREFIX):
        return None
    return f"{REMOTE_TEMP_QUEUE}{name[len(REPLY_QUEUE_PREFIX) :]}"


def names_temporary(frames: Sequence[tuple[str, Mapping[str, str], bytes]]) -> bool:
    """Whether a frame of ``frames`` names a temporary queue of its connection (on the
    path of every write: one look at each frame's destination, and at a reply-to)."""
    for _command, headers, _body in frames:
        if headers.get("destination", "").startswith(TEMP_QUEUE):
            return True
        if "reply-to" in headers and headers["reply-to"].startswith(TEMP_QUEUE):
            return True
    return False


class Numbering:
    """The broker's ids of one connection's temporary queues, counted as it counts.

    ``session`` is the connection's id (None: the broker gave none, and no id is
    known). Every frame written on the connection that names a temporary queue
    must pass :meth:`note`, in the order written.
    """

    def __init__(self, session: str | None) -> None:
        self.session = session
        self._numbers: dict[str, int] = {}

    def note(self, frames: Sequence[tuple[str, Mapping[str, str], bytes]]) -> None:
        for _command, headers, _body in frames:
            for key in _DESTINATION_HEADERS:
                value = headers.get(key, "")
                if value.startswith(TEMP_QUEUE) and value not in self._numbers:
                    self._numbers[value] = len(self._numbers) + 1

    def address(self, destination: str) -> str | None:
        """Our name (``zocalo.reply.<id>``) for the temporary queue ``destination`` of
        this connection; None if it was never named here, or the id is not known."""
        number = self._numbers.get(destination)
        if number is None or not self.session:
            return None
        return f"{REPLY_QUEUE_PREFIX}{self.session}:{number}"
