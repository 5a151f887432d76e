"""Which broker speaks STOMP at the other end, and what each can honour: one home.

The CONNECTED frame's ``server`` header names the broker (``ActiveMQ/5.17.6``,
``RabbitMQ/3.10.8``); everything that differs between them is decided here.

ActiveMQ Classic (the default, and any server we do not recognise): delays by
its scheduler, priorities 0-9, an absolute ``expires``, the delivery limit as a
``JMSXDeliveryCount`` selector (with a reaper for the rest), bound queues as
durable topic subscriptions, ``activemq.prefetchSize``.

RabbitMQ's STOMP plugin: ``/queue/<name>`` declares a queue on SEND and on
SUBSCRIBE, with the queue arguments the frame carries as headers, and refuses
(closing the connection) a frame whose arguments differ from the queue's. So
every frame to a queue carries the same arguments: a quorum queue, which counts
deliveries (``x-delivery-count``) even when a consumer dies, dead-lettering to
``DLQ.<prefix>.<queue>`` for what we NACK; a dead-letter queue is a plain
quorum queue. Expiry is the relative ``expiration`` (ms), the prefetch
``prefetch-count``. What does not map is refused with UnsupportedFeature:

- delays: RabbitMQ has no scheduler (a plugin we cannot assume);
- priorities: quorum queues have none (and a ``x-max-priority`` classic queue
  counts no deliveries);
- reply queues: RabbitMQ's temporary queues are named to others only through a
  ``reply-to`` header it rewrites, not by a name a job can carry;
- browsing (queue depths for the dead-letter tools): a SUBSCRIBE consumes;
- exclusive subscriptions: quorum queues ignore consumer exclusivity.

A bound queue is a work queue bound to the topic, which the transport removes
when it expires (:class:`.bound.TopicQueues`): RabbitMQ's own expiry
(``x-expires``) would make its arguments differ from a work queue's.

Use ``amqp://`` for those on RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Mapping

from zocalo.transport.base import Capability

#: The broker's own headers on RabbitMQ (queue arguments and parameters that a SEND
#: declaring a queue carries, and that RabbitMQ hands on with the message).
RABBITMQ_HEADERS = frozenset(
    {
        "amqp-message-id",
        "app-id",
        "auto-delete",
        "content-encoding",
        "durable",
        "exclusive",
        "expiration",
        "prefetch-count",
        "user-id",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-delivery-count",
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-message-ttl",
        "x-queue-name",
        "x-queue-type",
        "x-stream-offset",
    }
)

#: The headers of a NACK that dead-letters: RabbitMQ requeues a NACKed message unless
#: told not to (then its queue's dead-letter arguments apply); ActiveMQ ignores the
#: header and dead-letters it by its own policy.
DEAD_LETTER_NACK = {"requeue": "false"}

#: ActiveMQ's STOMP codec drops the whole connection of a frame with more headers, or a
#: longer header line (``name:value`` escaped, in UTF-8 bytes), than these.
MAX_HEADERS = 1000
MAX_HEADER_LINE = 10 * 1024

#: The capabilities every STOMP broker we speak to honours.
_COMMON = frozenset({Capability.EXPIRATION, Capability.DEAD_LETTER, Capability.CROSS_PROCESS})


class ActiveMQ:
    """ActiveMQ Classic."""

    name = "ActiveMQ"
    capabilities = _COMMON | {
        Capability.DELAY,
        Capability.DELAYED_BROADCAST,
        Capability.PRIORITY,
        Capability.REPLY_QUEUE,
        Capability.EXCLUSIVE,
    }
    #: The delivery limit is a JMSXDeliveryCount selector (and a reaper subscription).
    selects_by_delivery_count = True
    #: A bound queue is a durable topic subscription (else a queue bound to the topic).
    durable_subscriptions = True
    #: Nothing to declare: a queue is made by its first use (else declare_queue does).
    declares_on_first_use = True
    #: Why reply queues (temporary queues) and browsing are refused (None: they are not).
    refuses_reply_queues: str | None = None
    refuses_browsing: str | None = None
    #: Why an exclusive subscription is refused (None: ``activemq.exclusive`` keeps it).
    refuses_exclusive: str | None = None
    #: Unsubscribing returns what the broker sent the subscription and it did not take
    #: (else a NACK returns each: RabbitMQ keeps it with the connection until it closes).
    unsubscribe_returns = True
    #: A COMMIT's receipt means its SENDs are stored, so a publish goes as one
    #: transaction (one disk sync for the lot); else each SEND asks for a receipt.
    receipted_commits = True
    #: The most headers, and the longest header line, a frame may have (None: no limit
    #: a message meets).
    max_headers: int | None = MAX_HEADERS
    max_header_line: int | None = MAX_HEADER_LINE

    def queue_arguments(self, destination: str) -> dict[str, str]:
        """Headers every frame naming the queue ``destination`` carries: none."""
        return {}

    def prefetch(self, prefetch: int) -> dict[str, str]:
        return {"activemq.prefetchSize": str(prefetch)}

    def expiry(self, expiration: float, now: float) -> dict[str, str]:
        """The headers of a message that expires ``expiration`` s after ``now``."""
        return {"expires": str(round((now + expiration) * 1000))}

    def deliveries(self, frame: Mapping[str, str], before: int) -> int:
        """Which delivery this is, of a message delivered ``before`` times as other copies:
        ActiveMQ tells a STOMP client only that it was delivered before."""
        return before + (2 if frame.get("redelivered") == "true" else 1)


class RabbitMQ(ActiveMQ):
    """RabbitMQ's STOMP plugin (quorum queues)."""

    name = "RabbitMQ"
    capabilities = _COMMON | {Capability.DELIVERY_COUNT}
    selects_by_delivery_count = False
    #: The plugin receipts a COMMIT before its SENDs reach their queues (a consumer
    #: subscribing on that receipt may find no queue yet); a SEND's own receipt waits
    #: for the queue's confirm.
    receipted_commits = False
    durable_subscriptions = False
    declares_on_first_use = False
    refuses_reply_queues = (
        "RabbitMQ over STOMP has no reply queues here: its temporary queues are reached "
        "only through a reply-to header, not by a name a job can carry; use amqp://"
    )
    refuses_browsing = (
        "RabbitMQ's STOMP plugin cannot browse a queue (a SUBSCRIBE consumes it, and "
        "declares what it names); use amqp:// and the management API for queue depths"
    )
    refuses_exclusive = (
        "RabbitMQ's STOMP plugin cannot keep a queue to one consumer (a quorum queue "
        "ignores consumer exclusivity, and a lock queue another connection holds would "
        "close this one); use amqp://"
    )
    unsubscribe_returns = False
    max_headers = max_header_line = None

    def __init__(self, dead_letter_queue: str) -> None:
        #: The STOMP destination prefix of dead-letter queues (``/queue/DLQ.``).
        self._dead_letter_queue = dead_letter_queue

    def queue_arguments(self, destination: str) -> dict[str, str]:
        if not destination.startswith("/queue/"):
            return {}
        arguments = {"durable": "true", "auto-delete": "false", "x-queue-type": "quorum"}
        if destination.startswith(self._dead_letter_queue):
            return arguments
        dead_letters = self._dead_letter_queue + destination[len("/queue/") :]
        arguments["x-dead-letter-exchange"] = ""
        arguments["x-dead-letter-routing-key"] = dead_letters[len("/queue/") :]
        return arguments

    def prefetch(self, prefetch: int) -> dict[str, str]:
        return {"prefetch-count": str(prefetch)}

    def expiry(self, expiration: float, now: float) -> dict[str, str]:
        return {"expiration": str(max(0, round(expiration * 1000)))}

    def deliveries(self, frame: Mapping[str, str], before: int) -> int:
        """A quorum queue counts the returns of this copy (a crashed consumer's too)."""
        try:
            returned = int(frame.get("x-delivery-count", ""))
        except ValueError:  # a queue of another kind: only "delivered before" is known
            returned = 1 if frame.get("redelivered") == "true" else 0
        return before + 1 + max(0, returned)


Flavour = ActiveMQ


def flavour_of(server: str, dead_letter_queue: str) -> Flavour:
    """The flavour of the broker whose CONNECTED frame said ``server``."""
    if server.startswith("RabbitMQ"):
        return RabbitMQ(dead_letter_queue)
    return ActiveMQ()
