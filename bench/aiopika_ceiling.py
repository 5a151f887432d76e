"""The ``aiopika-ceiling`` side of ``bench/rabbitmq.py``: a minimal pipelined forwarder.

    python aiopika_ceiling.py QUEUE AMQP_URL

One asyncio process per step, on aio-pika: consume ``QUEUE`` (a quorum queue
declared by the bench) with prefetch ``$ZOCALO_BENCH_PREFETCH`` (default 100),
decode the recipe message, move ``recipe-pointer`` on to the step's ``output``
(appending the old pointer to ``recipe-path``), publish the new body to that
step's queue on the default exchange (persistent, same headers) with publisher
confirms, and ack the input once the publish is confirmed. Each message is its
own task, so many publishes are in flight at once: no per-message round trip
is waited for before the next message is handled. No error handling, no
recipe validation, no service framework: a ceiling, not a service.
SIGTERM ends the process (the bench stops the whole process group).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

PREFETCH = int(os.environ.get("ZOCALO_BENCH_PREFETCH", "100"))


def next_hop(body: bytes) -> tuple[str, bytes]:
    """The queue of the next recipe step and the message body for it."""
    message: dict[str, Any] = json.loads(body)
    recipe = message["recipe"]
    pointer = message["recipe-pointer"]
    output = recipe[str(pointer)]["output"]
    target = output[0] if isinstance(output, list) else output
    message["recipe-path"] = [*message["recipe-path"], pointer]
    message["recipe-pointer"] = target
    return recipe[str(target)]["queue"], json.dumps(message).encode()


async def forward(
    exchange: aio_pika.abc.AbstractExchange, incoming: AbstractIncomingMessage
) -> None:
    queue, body = next_hop(incoming.body)
    outgoing = aio_pika.Message(
        body,
        headers=dict(incoming.headers or {}),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await exchange.publish(outgoing, routing_key=queue)  # returns once confirmed
    await incoming.ack()


async def run(queue_name: str, url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(queue_name, ensure=True)
        exchange = channel.default_exchange
        tasks: set[asyncio.Task[None]] = set()

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(forward(exchange, incoming))
            tasks.add(task)
            task.add_done_callback(done)

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                print(f"forward failed: {task.exception()!r}", file=sys.stderr, flush=True)

        await queue.consume(on_message, no_ack=False)
        await asyncio.Future()  # until SIGTERM


def main(argv: list[str]) -> None:
    asyncio.run(run(argv[0], argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
