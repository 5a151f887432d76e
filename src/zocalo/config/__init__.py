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


def transport_url(config: SiteConfiguration, name: str | None = None) -> str | None:
    """See :func:`zocalo.config.plugins.transport_url`."""
    return config.transport_url(name)


__all__ = ["ConfigurationError", "SiteConfiguration", "load_configuration", "transport_url"]
