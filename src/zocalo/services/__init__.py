"""Shipped services, one module each (registered under the ``zocalo.services`` entry points)."""
