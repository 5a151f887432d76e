"""The embedded SQLite broker (``sqlite:///path/broker.db``)."""

from zocalo.transport.sqlite.transport import SqliteTransport, broker_path

__all__ = ["SqliteTransport", "broker_path"]
