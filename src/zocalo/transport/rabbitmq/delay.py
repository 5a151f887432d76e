"""Delayed delivery on a RabbitMQ without the delayed-message plugin.

Per-message TTL only expires at the head of a queue, so one wait queue would
hold a 1 s delay behind a 60 s one. Instead there is one wait queue per
power of two (level k waits 2^k ms, every message in it the same TTL, so it
expires in order), and a message passes through the levels whose bit is set
in its delay. The routing key carries the delay's bits, most significant
first, then the destination queue: ``0.1.1.0.<queue>``. Each level's topic
exchange sends a message with its bit set into its wait queue and the rest
straight on to the next level; the wait queue dead-letters expired messages
to the next level too, keeping the routing key. After level 0 the delivery
exchange routes ``<bits>.<queue>`` to the queue, which is bound there with a
pattern of exactly LEVELS words followed by its name (so ``a.b`` is never
matched by a binding for ``b``).

Everything is durable: a delayed message arrives although its sender exited.
"""

from __future__ import annotations

#: The reference's delayed-message exchange (needs the RabbitMQ plugin); used instead
#: of the levels below when the broker has it.
PLUGIN_DELAY_EXCHANGE = "delayed"

#: 2^32 ms is 49 days: longer delays are refused.
LEVELS = 32
PREFIX = "zocalo.delay"
DELIVERY_EXCHANGE = f"{PREFIX}.delivery"
MAX_DELAY_MS = 2**LEVELS - 1


def only_delays(exchange: str) -> bool:
    """Whether ``exchange`` only held messages back on their way to their queue."""
    return exchange == PLUGIN_DELAY_EXCHANGE or exchange.startswith(PREFIX + ".")


def level_exchange(level: int) -> str:
    return f"{PREFIX}.level{level}"


def level_queue(level: int) -> str:
    return f"{PREFIX}.wait{level}"


def next_hop(level: int) -> str:
    """Where a message goes after level ``level``."""
    return level_exchange(level - 1) if level > 0 else DELIVERY_EXCHANGE


def first_exchange() -> str:
    return level_exchange(LEVELS - 1)


def routing_key(delay_seconds: float, queue: str) -> str:
    """The routing key that delays a message by ``delay_seconds`` on its way to ``queue``."""
    milliseconds = max(0, round(delay_seconds * 1000))
    if milliseconds > MAX_DELAY_MS:
        raise ValueError(f"a delay of {delay_seconds} s is longer than {MAX_DELAY_MS // 1000} s")
    bits = format(milliseconds, f"0{LEVELS}b")
    return ".".join(bits) + "." + queue


def _bit_pattern(level: int, bit: str) -> str:
    """Match routing keys whose bit for ``level`` is ``bit``."""
    position = LEVELS - 1 - level
    return ".".join(["*"] * position + [bit, "#"])


def delivery_binding(queue: str) -> str:
    """The pattern binding ``queue`` to the delivery exchange."""
    return ".".join(["*"] * LEVELS) + "." + queue


def topology() -> list[tuple[str, dict]]:
    """Declarations (operation, arguments) that build the levels; all idempotent."""
    steps: list[tuple[str, dict]] = [
        ("exchange", {"exchange": DELIVERY_EXCHANGE, "exchange_type": "topic", "durable": True})
    ]
    for level in range(LEVELS):
        exchange, wait = level_exchange(level), level_queue(level)
        steps += [
            ("exchange", {"exchange": exchange, "exchange_type": "topic", "durable": True}),
            (
                "queue",
                {
                    "queue": wait,
                    "durable": True,
                    "arguments": {
                        "x-message-ttl": 2**level,
                        "x-dead-letter-exchange": next_hop(level),
                    },
                },
            ),
            (
                "bind_queue",
                {"queue": wait, "exchange": exchange, "routing_key": _bit_pattern(level, "1")},
            ),
        ]
    for level in range(LEVELS):
        steps.append(
            (
                "bind_exchange",
                {
                    "destination": next_hop(level),
                    "source": level_exchange(level),
                    "routing_key": _bit_pattern(level, "0"),
                },
            )
        )
    return steps
