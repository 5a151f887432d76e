"""AMQP application headers <-> the JSON-like header dicts of the transport contract.

Values: pika decodes tables into bytes, datetimes and decimals and encodes no
floats, so both directions are converted here. Meaning: the broker's own
``x-death`` header is translated into our dead-letter header names on the
way in (:func:`translate_dead_letter`), so a consumer reads one vocabulary
whoever dead-lettered a message.
"""

from __future__ import annotations

import datetime
import math
from decimal import Decimal
from typing import Any

from zocalo.transport.dead_letters import (
    ENTRY_TIME_KEY,
    dead_letter_marks,
    entry_seconds,
    utc_timestamp,
    with_history,
)
from zocalo.transport.rabbitmq import delay as delays


def from_amqp(value: Any) -> Any:
    """pika's decoded table values as JSON-like values (timestamps -> epoch seconds)."""
    if isinstance(value, dict):
        return {str(key): from_amqp(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [from_amqp(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=value.tzinfo or datetime.UTC).timestamp()
    if isinstance(value, Decimal):
        return float(value)
    return value


def to_amqp(value: Any) -> Any:
    """JSON-like values as pika can encode them in a table (floats as decimals)."""
    if isinstance(value, dict):
        return {str(key): to_amqp(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_amqp(item) for item in value]
    if isinstance(value, float):
        return _as_decimal(value)
    return value


_INT32 = 2**31


def _as_decimal(value: float) -> Decimal | int | float:
    """The closest value AMQP can carry: pika encodes no floats, and a decimal only as a
    32-bit mantissa with a scale, so digits that do not fit are rounded away (an epoch
    time in seconds keeps no fraction; beyond 32 bits it travels as an integer)."""
    if not math.isfinite(value) or abs(value) >= 2**63:
        return value  # pika refuses it: the publish fails with a clear reason
    exact = Decimal(repr(value))
    places = max(0, -int(exact.as_tuple().exponent))
    while places > 0:
        scaled = exact.scaleb(places).to_integral_value()
        if abs(scaled) < _INT32:
            return scaled.scaleb(-places)
        places -= 1
    whole = round(value)
    return Decimal(whole) if abs(whole) < _INT32 else whole


def translate_dead_letter(headers: dict[str, Any]) -> None:
    """Describe a broker-dead-lettered message (``x-death``) in our DLQ header names.

    We never publish the broker's headers (they are stripped), so an
    ``x-death`` here tells what happened since we last published the message:
    its deaths join our own history header, which survives the next publish,
    and the latest dead-lettering is the reason. The delay topology's wait
    queues are hops, not history, and are left out.
    """
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return
    history = [
        _dated(death)
        for death in deaths
        if isinstance(death, dict) and not str(death.get("queue", "")).startswith(delays.PREFIX)
    ]
    latest = next(
        (d for d in history if d.get("reason") in ("rejected", "delivery_limit", "maxlen")), None
    )
    if latest is None:
        return
    # x-death lists the most recent first; our history is oldest first.
    headers.update(
        dead_letter_marks(
            reason=f"{latest['reason']} (dead-lettered by RabbitMQ)",
            queue=str(latest.get("queue")),
            history=with_history(headers, *reversed(history)),
        )
    )


def _dated(death: dict[str, Any]) -> dict[str, Any]:
    """An ``x-death`` table as a history entry: with its time as ISO text too (its epoch
    seconds would not keep a fraction on the next publish anyway)."""
    seconds = entry_seconds(death)
    return death if seconds is None else {**death, ENTRY_TIME_KEY: utc_timestamp(seconds)}
