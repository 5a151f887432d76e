"""The ActiveMQ transport (``stomp://``), on stomp.py."""

from zocalo.transport.stomp.transport import StompTransport

__all__ = ["StompTransport"]
