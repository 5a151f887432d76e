"""The ``aiopika-ceiling`` side of ``bench/rabbitmq.py``: a minimal batching forwarder.

    python aiopika_ceiling.py QUEUE AMQP_URL

One asyncio process per step, on aio-pika: consume ``QUEUE`` (a quorum queue
declared by the bench) with prefetch ``$ZOCALO_BENCH_PREFETCH`` (default 100),
decode the recipe message, move ``recipe-pointer`` on to the step's ``output``
(appending the old pointer to ``recipe-path``) and publish the new body to
that step's queue on the default exchange (persistent, same headers) on a
channel with publisher confirms.

Batched, still at-least-once: every delivery's publish goes out at once
(nothing waits for a confirm, or for the socket to drain, before the next
message is handled; a prefetch worth of confirms is in flight), and the inputs
are acked with one ``basic.ack multiple=True`` up to the highest delivery tag
whose output, and every earlier one's, is confirmed, once per burst of
confirms.

aio-pika opens the connection and the channel; consume, publish and ack go
through the aiormq channel under it, the fastest this stack gets. aio-pika's
own per-message layer costs more: ``Queue.consume`` wraps each delivery in an
``IncomingMessage`` and runs the callback as a second task, and
``Exchange.publish`` (a ``Message`` per publish) holds the channel lock until
the writer has drained each frame (aiormq ``wait=True``), serialising the
publishes; ``wait=False`` does not. No error handling, no recipe validation,
no service framework: a ceiling, not a service. SIGTERM ends the process (the
bench stops the whole process group).
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from typing import Any

import aio_pika
import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from forwarding import next_hop

PREFETCH = int(os.environ.get("ZOCALO_BENCH_PREFETCH", "100"))


class Acker:
    """The inputs in delivery order; acks the confirmed prefix with one multiple ack."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.pending: collections.deque[list[Any]] = collections.deque()  # [tag, confirmed]
        self.wake = asyncio.Event()

    def received(self, tag: int) -> list[Any]:
        entry = [tag, False]
        self.pending.append(entry)
        return entry

    def confirmed(self, entry: list[Any]) -> None:
        entry[1] = True
        self.wake.set()  # the flusher runs once, after this burst of confirms

    async def flusher(self) -> None:
        pending = self.pending
        while True:
            await self.wake.wait()
            self.wake.clear()
            last = None
            while pending and pending[0][1]:
                last = pending.popleft()[0]
            if last is not None:
                await self.channel.basic_ack(last, multiple=True, wait=False)


async def run(queue_name: str, url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        raw = await channel.get_underlay_channel()
        acker = Acker(raw)

        async def on_message(incoming: DeliveredMessage) -> None:
            # A task per delivery (aiormq's); the tasks start in delivery order.
            entry = acker.received(incoming.delivery_tag)
            target, body = next_hop(incoming.body)
            headers = incoming.header.properties.headers
            properties = aiormq.spec.Basic.Properties(delivery_mode=2, headers=headers)
            # mandatory=False (aiormq's default): no basic.return to wait for.
            await raw.basic_publish(body, routing_key=target, properties=properties, wait=False)
            acker.confirmed(entry)  # basic_publish returns once the broker confirmed it

        flusher = asyncio.create_task(acker.flusher())
        await raw.basic_consume(queue_name, on_message)
        await flusher  # forever: until SIGTERM


def main(argv: list[str]) -> None:
    asyncio.run(run(argv[0], argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
