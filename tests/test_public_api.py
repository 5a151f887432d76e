"""``import zocalo`` is the public face: the names a service author uses, loaded on demand."""

from __future__ import annotations

import importlib.resources
import inspect
import subprocess
import sys

import pytest

import zocalo
import zocalo.errors

#: The public names, and where each one lives. Adding a name to the face is a
#: decision: make it here and in ``zocalo/__init__.py``.
PUBLIC = {
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


def test_all_names_exactly_the_public_names() -> None:
    assert sorted(zocalo.__all__) == sorted(PUBLIC)
    assert len(set(zocalo.__all__)) == len(zocalo.__all__), "a name listed twice"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_is_the_object_from_its_home(name: str) -> None:
    home = importlib.import_module(PUBLIC[name])
    assert getattr(zocalo, name) is getattr(home, name)
    assert name in dir(zocalo)


def test_every_error_of_the_family_is_public() -> None:
    """The whole ``zocalo.errors`` hierarchy can be caught as ``zocalo.<Name>``."""
    family = {
        name
        for name, value in vars(zocalo.errors).items()
        if inspect.isclass(value) and issubclass(value, zocalo.ZocaloError)
    }
    assert family <= set(zocalo.__all__), family - set(zocalo.__all__)


def test_a_star_import_gives_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from zocalo import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'zocalo' has no attribute 'Servise'"):
        zocalo.Servise  # noqa: B018


def test_importing_zocalo_loads_nothing_else() -> None:
    """The face is lazy: every Zocalo process (a supervisor too) imports this package."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import zocalo\n"
        "print(*sorted(set(sys.modules) - before))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == ["zocalo"]


def test_the_package_is_marked_typed() -> None:
    """PEP 561: ``py.typed`` beside the code tells type checkers to read its hints."""
    assert importlib.resources.files("zocalo").joinpath("py.typed").is_file()
