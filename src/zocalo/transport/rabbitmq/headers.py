"""AMQP application headers <-> the JSON-like header dicts of the transport contract."""

from __future__ import annotations

import datetime
import math
from decimal import Decimal
from typing import Any


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
    places = max(0, -int(exact.as_tuple().exponent))  # type: ignore[arg-type]
    while places > 0:
        scaled = exact.scaleb(places).to_integral_value()
        if abs(scaled) < _INT32:
            return scaled.scaleb(-places)
        places -= 1
    whole = round(value)
    return Decimal(whole) if abs(whole) < _INT32 else whole
