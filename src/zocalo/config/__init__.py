"""Site configuration in python-zocalo's format: ``version: 1`` YAML with environments.

A site's existing ``ZOCALO_CONFIG`` file loads unchanged::

    from zocalo.config import load_configuration

    config = load_configuration(environments=["live"])  # path from $ZOCALO_CONFIG
    config.transport_url()          # amqp://... from the environment's pika section
    config.storage["zocalo.recipe_directory"]

See :mod:`zocalo.config.loader` for the format, includes and activation order.
"""

from __future__ import annotations

from zocalo.config.loader import ConfigurationError, SiteConfiguration, load_configuration
from zocalo.config.plugins import transport_url

__all__ = ["ConfigurationError", "SiteConfiguration", "load_configuration", "transport_url"]
