"""Zocalo: automated data processing carried by messages, one recipe step at a time.

The names a service author needs come from here::

    from zocalo import Service, handler

and so does starting a job and reading its results from Python::

    for reply in zocalo.submit(url, ["spots"], {"image": 7}, dcid=1234, results=3):
        print(reply.payload)

The rest (the runner, each transport's details, the tools) is imported from
the module it lives in.

Each name loads on first use, not with the package: every process that imports
any part of Zocalo runs this file, the supervisor of each of a hundred services
among them, and that one must stay small (no broker client, no pydantic; see
``zocalo.service.supervisor``).
"""

TYPE_CHECKING = False  # as typing.TYPE_CHECKING (type checkers read it so), without typing
if TYPE_CHECKING:
    from zocalo.errors import (
        AdminError,
        ConfigurationError,
        ConnectionFailed,
        InvalidMessage,
        InvalidRecipe,
        InvalidURL,
        PublishFailed,
        TransportError,
        UnsupportedFeature,
        ZocaloError,
    )
    from zocalo.recipe.model import Recipe
    from zocalo.recipe.step import RecipeStep
    from zocalo.service.base import Service, handler
    from zocalo.submission import submit
    from zocalo.transport.base import Transport
    from zocalo.transport.registry import create_transport

#: Each public name and the module it lives in.
_HOMES = {
    "Service": "zocalo.service.base",
    "handler": "zocalo.service.base",
    "RecipeStep": "zocalo.recipe.step",
    "Recipe": "zocalo.recipe.model",
    "create_transport": "zocalo.transport.registry",
    "Transport": "zocalo.transport.base",
    "ZocaloError": "zocalo.errors",
    "TransportError": "zocalo.errors",
    "ConnectionFailed": "zocalo.errors",
    "UnsupportedFeature": "zocalo.errors",
    "PublishFailed": "zocalo.errors",
    "InvalidURL": "zocalo.errors",
    "InvalidRecipe": "zocalo.errors",
    "InvalidMessage": "zocalo.errors",
    "ConfigurationError": "zocalo.errors",
    "AdminError": "zocalo.errors",
    "submit": "zocalo.submission",
}

__all__ = [
    "AdminError",
    "ConfigurationError",
    "ConnectionFailed",
    "InvalidMessage",
    "InvalidRecipe",
    "InvalidURL",
    "PublishFailed",
    "Recipe",
    "RecipeStep",
    "Service",
    "Transport",
    "TransportError",
    "UnsupportedFeature",
    "ZocaloError",
    "create_transport",
    "handler",
    "submit",
]


def __getattr__(name: str) -> object:
    """Load a public name from its home on first use, and keep it here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'zocalo' has no attribute {name!r}")
    from importlib import import_module  # here, not above: ``import zocalo`` loads nothing

    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
