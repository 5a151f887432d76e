"""One transport contract, many brokers, selected by URL."""

from __future__ import annotations

from zocalo.transport.base import (
    DEFAULT_DELIVERY_LIMIT,
    Callback,
    Capability,
    Confirmation,
    Delivery,
    Outgoing,
    Subscription,
    Transport,
    dlq_name,
    reply_queue_name,
)
from zocalo.transport.registry import create_transport, transport_class

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "Callback",
    "Capability",
    "Confirmation",
    "Delivery",
    "Outgoing",
    "Subscription",
    "Transport",
    "create_transport",
    "dlq_name",
    "reply_queue_name",
    "transport_class",
]
