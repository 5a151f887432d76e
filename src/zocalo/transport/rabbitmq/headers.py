"""AMQP application headers <-> the JSON-like header dicts of the transport contract."""

from __future__ import annotations

import datetime
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
        return Decimal(repr(value))
    return value
