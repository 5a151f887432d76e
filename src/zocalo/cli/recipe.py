"""zocalo recipe validate|show|list: check, draw and find recipes."""

from __future__ import annotations

from pathlib import Path

import click

from zocalo.cli.common import fail
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.errors import InvalidRecipe, ZocaloError
from zocalo.recipe import Recipe
from zocalo.recipe.graph import FORMATS, render
from zocalo.recipe.library import RECIPE_DIRECTORY_KEY, RecipeLibrary
from zocalo.recipe.validation import check_every_route


def _examined(path: Path) -> tuple[Recipe | None, list[InvalidRecipe]]:
    """The recipe in ``path`` and every reason the Dispatcher would refuse it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return None, [InvalidRecipe(f"cannot be read: {error}")]
    return Recipe.examine(text)


def _checked(path: Path) -> Recipe:
    """The recipe in ``path``, as the Dispatcher would accept it; InvalidRecipe if not."""
    recipe, problems = _examined(path)
    if problems:
        raise problems[0]
    assert recipe is not None  # no problems: it loaded
    return recipe


def _library(site_config: SiteConfiguration) -> RecipeLibrary:
    library = RecipeLibrary.from_storage(site_config.storage)
    if library is None:
        fail(f"the site configuration names no recipe library (storage key {RECIPE_DIRECTORY_KEY})")
    if not library.directory.is_dir():
        fail(f"the recipe library {library.directory} is not a directory")
    return library


@click.group("recipe")
def command() -> None:
    """Check, draw and list recipes."""


@command.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check each recipe FILE; one line per problem, naming the file, step and field.

    Exit status 0 when every file is valid, else 1.
    """
    problems = 0
    for path in files:
        for problem in _examined(path)[1]:
            problems += 1
            click.echo(f"{path}: {problem}")
    if problems:
        raise click.exceptions.Exit(1)
    click.echo(f"{len(files)} recipe{'s' if len(files) != 1 else ''} valid")


@command.command("show")
@click.argument("recipe")
@click.option(
    "--format",
    "style",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for the terminal; mermaid or dot for documentation.",
)
@site_config_options
def show(recipe: str, style: str, site_config: SiteConfiguration) -> None:
    """Draw the step graph of RECIPE: a file, or a name in the site's recipe library."""
    path = Path(recipe)
    try:
        if not path.exists() and RecipeLibrary.from_storage(site_config.storage):
            loaded = _library(site_config).load(recipe)
            check_every_route(loaded.steps)
        else:
            loaded = _checked(path)
    except ZocaloError as error:
        fail(f"{recipe}: {error}")
    click.echo(render(loaded, style))


@command.command("list")
@site_config_options
def list_recipes(site_config: SiteConfiguration) -> None:
    """List the recipes of the site's recipe library (storage key zocalo.recipe_directory)."""
    for name in _library(site_config).names():
        click.echo(name)
