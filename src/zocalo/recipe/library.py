"""The recipe library: named recipes, one JSON file each, in the site's recipe directory.

A Dispatcher request names recipes; python-zocalo loads each from
``<zocalo.recipe_directory>/<name>.json`` (a key of the site configuration's
``storage`` plugin), and so do we. The Dispatcher and ``zocalo recipe list``
read the library through this one class, so both agree on what a name means.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zocalo.errors import InvalidRecipe, ZocaloError
from zocalo.recipe.model import Recipe

#: The ``storage`` key naming the recipe directory (python-zocalo's).
RECIPE_DIRECTORY_KEY = "zocalo.recipe_directory"
SUFFIX = ".json"


class UnknownRecipe(ZocaloError, LookupError):
    """A recipe name the library has no file for (or a name that is no file name)."""


class RecipeLibrary:
    """The ``*.json`` recipes of one directory, by name (the file name without ``.json``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    @classmethod
    def from_storage(cls, storage: Mapping[str, Any]) -> RecipeLibrary | None:
        """The library a site configuration's ``storage`` names, or None if it names none."""
        directory = storage.get(RECIPE_DIRECTORY_KEY)
        return cls(directory) if directory else None

    def __repr__(self) -> str:
        return f"RecipeLibrary({str(self.directory)!r})"

    def path_of(self, name: Any) -> Path:
        """The file of recipe ``name``; a name that would leave the directory is refused.

        (python-zocalo joins the name to the directory as it is, so ``../x`` reads a file
        outside it; a request must not choose which file of the machine a service opens.)
        """
        if not isinstance(name, str) or not name or "\0" in name:
            raise UnknownRecipe(f"a recipe name must be a non-empty string, not {name!r}")
        root = self.directory.resolve()
        path = (root / f"{name}{SUFFIX}").resolve()
        if not path.is_relative_to(root):
            raise UnknownRecipe(f"recipe name {name!r} leads outside the recipe directory {root}")
        return path

    def load(self, name: Any) -> Recipe:
        """Recipe ``name``, validated. UnknownRecipe or InvalidRecipe name it and its file."""
        path = self.path_of(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UnknownRecipe(
                f"no recipe named {name!r} (no file {path.name} in {self.directory})"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise UnknownRecipe(f"recipe {name!r} cannot be read from {path}: {error}") from None
        try:
            recipe = Recipe(text)
            recipe.validate()
        except InvalidRecipe as error:
            raise InvalidRecipe(f"recipe {name!r} ({path}): {error}") from None
        return recipe

    def names(self) -> list[str]:
        """Every recipe name in the library, sorted (subdirectories give ``dir/name``)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path.relative_to(self.directory).with_suffix("").as_posix()
            for path in self.directory.rglob(f"*{SUFFIX}")
            if path.is_file()
        )
