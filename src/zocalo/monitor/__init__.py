"""Watching a running fleet: a live view of the status topic, and Prometheus metrics."""

from zocalo.monitor.aggregate import Entry, FleetStatus

__all__ = ["Entry", "FleetStatus"]
