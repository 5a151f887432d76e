"""Names the broker URL rule (``transport.registry.resolve_broker_url``) needs without
importing the plugin schemas."""

from __future__ import annotations

#: python-zocalo's transport names for -t, and the plugin section each reads.
TRANSPORT_NAMES = {"PikaTransport": "pika", "StompTransport": "stomp"}
