"""Shipped services, one module each (``zocalo.service -s NAME`` finds them by entry point)."""
