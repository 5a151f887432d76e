"""Shipped services, one module each (run them with zocalo.service -s NAME)."""
