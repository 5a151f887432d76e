"""The recipe library: names to validated recipes, and nothing outside its directory."""

from __future__ import annotations

import json

import pytest

from zocalo.errors import InvalidRecipe
from zocalo.recipe.library import RECIPE_DIRECTORY_KEY, RecipeLibrary, UnknownRecipe

VALID = {"1": {"queue": "a"}, "start": [[1, {}]]}


@pytest.fixture
def library(tmp_path):
    (tmp_path / "valid.json").write_text(json.dumps(VALID))
    (tmp_path / "broken.json").write_text(json.dumps({"1": {"queue": "a"}}))
    (tmp_path / "beamline").mkdir()
    (tmp_path / "beamline" / "i03.json").write_text(json.dumps(VALID))
    (tmp_path / "notes.txt").write_text("not a recipe")
    return RecipeLibrary(tmp_path)


def test_names_load_as_validated_recipes(library):
    assert library.names() == ["beamline/i03", "broken", "valid"]
    assert library.load("valid").to_dict() == {"start": [[1, {}]], "1": {"queue": "a"}}
    assert library.load("beamline/i03").steps[1]["queue"] == "a"


def test_the_site_configuration_names_the_directory(tmp_path):
    assert RecipeLibrary.from_storage({}) is None
    library = RecipeLibrary.from_storage({RECIPE_DIRECTORY_KEY: str(tmp_path)})
    assert library is not None and library.directory == tmp_path


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("missing", UnknownRecipe, r"no recipe named 'missing' \(no file missing.json in "),
        ("broken", InvalidRecipe, r"recipe 'broken' \(.*broken.json\): Invalid recipe: .*start"),
        ("../outside", UnknownRecipe, "'../outside' leads outside the recipe directory"),
        ("/etc/passwd", UnknownRecipe, "leads outside the recipe directory"),
        ("", UnknownRecipe, "must be a non-empty string"),
        (7, UnknownRecipe, "must be a non-empty string, not 7"),
    ],
)
def test_errors_name_the_recipe(library, name, error, message):
    with pytest.raises(error, match=message):
        library.load(name)


def test_a_missing_directory_lists_no_recipes(tmp_path):
    assert RecipeLibrary(tmp_path / "nowhere").names() == []
