"""The ``pika-ceiling`` side of ``bench/rabbitmq.py``: a minimal batching forwarder.

    python pika_ceiling.py QUEUE AMQP_URL

One single-threaded process per step on a raw pika ``SelectConnection``:
consume ``QUEUE`` (a quorum queue declared by the bench) with prefetch
``$ZOCALO_BENCH_PREFETCH`` (default 100), decode the recipe message, move
``recipe-pointer`` on to the step's ``output`` (appending the old pointer to
``recipe-path``) and publish the new body to that step's queue on the default
exchange (persistent, same headers) on a second channel, in confirm mode (as
our transport does; each channel is a process of its own in the broker, and
two channels measured faster than one shared by consuming and publishing).

Batched, still at-least-once: a delivery is published straight from the
delivery callback (pika buffers the frames and writes them when the socket is
writable, so a burst of deliveries goes out in few writes), the broker
confirms with ``basic.ack`` (mostly ``multiple``), and the inputs are acked
with one ``basic.ack multiple=True`` up to the highest delivery tag whose
output, and every earlier one's, is confirmed, once per turn of the I/O loop.
No error handling, no recipe validation, no service framework: a ceiling, not
a service. SIGTERM ends the process (the bench stops the whole process group).
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any

import pika
from forwarding import next_hop
from pika.spec import Basic, BasicProperties

PREFETCH = int(os.environ.get("ZOCALO_BENCH_PREFETCH", "100"))


class Forwarder:
    """The forwarder of one queue: its connection, its two channels, its bookkeeping."""

    def __init__(self, queue: str, url: str) -> None:
        self.queue = queue
        self.published = 0  # the publish sequence number of the last publish
        self.confirmed = 0  # every publish up to here is confirmed
        self.singles: set[int] = set()  # confirmed out of order (multiple=False)
        self.pending: collections.deque[tuple[int, int]] = collections.deque()  # (seq, tag)
        self.flush_due = False  # a flush is scheduled for this turn of the I/O loop
        self.connection = pika.SelectConnection(
            pika.URLParameters(url), on_open_callback=self.on_open
        )

    def on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self.on_publisher)

    def on_publisher(self, channel: Any) -> None:
        self.publisher = channel
        channel.confirm_delivery(self.on_confirm)  # before any publish on it
        self.connection.channel(on_open_callback=self.on_consumer)

    def on_consumer(self, channel: Any) -> None:
        self.consumer = channel
        channel.basic_qos(prefetch_count=PREFETCH)
        channel.basic_consume(self.queue, self.on_message)

    def on_message(
        self, channel: Any, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        target, out = next_hop(body)
        self.publisher.basic_publish(
            "", target, out, BasicProperties(delivery_mode=2, headers=properties.headers)
        )
        self.published += 1
        self.pending.append((self.published, method.delivery_tag))

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, Basic.Ack):
            raise RuntimeError(f"publish refused by the broker: {method}")
        if method.multiple:
            self.confirmed = max(self.confirmed, method.delivery_tag)
        else:
            self.singles.add(method.delivery_tag)
        if not self.flush_due:  # after every frame of this read is handled
            self.flush_due = True
            self.connection.ioloop.call_later(0, self.flush)

    def flush(self) -> None:
        """Ack, with one multiple ack, every input whose output is confirmed."""
        self.flush_due = False
        pending, singles, last = self.pending, self.singles, None
        while pending and (pending[0][0] <= self.confirmed or pending[0][0] in singles):
            seq, last = pending.popleft()
            singles.discard(seq)
        if last is not None:
            self.consumer.basic_ack(last, multiple=True)


def main(argv: list[str]) -> None:
    Forwarder(argv[0], argv[1]).connection.ioloop.start()  # until SIGTERM


if __name__ == "__main__":
    main(sys.argv[1:])
