"""A broker to put dead letters in and read queues back from, for the dead-letter tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from zocalo.transport import Delivery, Outgoing, Transport, create_transport, dlq_name
from zocalo.transport.dead_letters import dead_letter_marks

#: Ends every :meth:`Broker.take_all`: what came before it was in the queue.
SENTINEL = b'"sentinel"'


@dataclass
class Broker:
    """A broker for one test: its URL, and ways to fill and read its queues."""

    kind: str
    url: str
    make_collector: Callable[..., Any]
    opened: list[Transport] = field(default_factory=list)

    def connect(self, **options: Any) -> Transport:
        transport = create_transport(self.url, **options)
        transport.connect()
        self.opened.append(transport)
        return transport

    @property
    def client(self) -> Transport:
        return self.opened[0] if self.opened else self.connect()

    @property
    def stomp_prefix(self) -> str:
        """The destination prefix of an ActiveMQ broker's URL ("" elsewhere)."""
        if self.kind != "stomp":
            return ""
        return parse_qs(urlsplit(self.url).query).get("prefix", [""])[0]

    @staticmethod
    def queue(label: str) -> str:
        return f"dlqtest.{label}.{uuid.uuid4().hex[:8]}"

    def dead_letter(
        self,
        queue: str,
        bodies: Sequence[bytes],
        *,
        reason: str = "ValueError: bad image (after 3 attempts)",
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Put ``bodies`` into ``dlq.<queue>`` as the runner dead-letters them."""
        self.client.declare_queue(queue)  # RabbitMQ: the queue and its dlq.<queue>
        marks = dead_letter_marks(reason=reason, queue=queue, history=[reason])
        messages = [
            Outgoing(dlq_name(queue), body, {**(headers or {}), **marks}) for body in bodies
        ]
        self.client.publish(messages).result(60)

    def take_all(self, queue: str) -> list[Delivery]:
        """Every message ``queue`` holds (consumed): up to a sentinel sent behind them."""
        transport = self.connect()
        transport.declare_queue(queue)
        transport.send(queue, SENTINEL)
        received = self.make_collector(ack_with=transport)
        subscription = transport.subscribe(queue, received, prefetch=50)
        deliveries = received.wait_for_body(SENTINEL, timeout=30)
        transport.unsubscribe(subscription)
        return deliveries[: [d.body for d in deliveries].index(SENTINEL)]

    def close(self) -> None:
        for transport in reversed(self.opened):
            transport.close()


def one_error_line(output: str) -> str:
    """The one ``Error:`` line of a failed command (never a traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]
