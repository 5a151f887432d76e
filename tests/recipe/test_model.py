"""Loading, normalising, accessing and serialising recipes, against python-workflows."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from workflows.recipe import Recipe as Reference

from zocalo.errors import InvalidRecipe
from zocalo.recipe import Recipe

FULL = {
    "1": {
        "service": "Find spots",
        "queue": "per_image_analysis",
        "parameters": {"image": "{file}", "nested": {"a": [1, 2.5, None, True]}},
        "output": 2,
        "error": [3],
        "wrapper": {"task_information": "spots"},
        "transport-delay": 2.5,
        "exchange": "delayed",
        "custom-key": {"anything": ["goes", 1]},
    },
    "2": {"topic": "transient.results", "output": {"ok": [3], "other": 3}},
    "3": {"queue": "archive", "something_else": 42},
    "start": [[1, {"file": "x.cbf"}], [1, ["list", "payload"]], [2, None]],
    "error": [3],
}


def _wire(recipe: Any) -> Any:
    return json.loads(recipe.serialize())


LOAD_CASES = {
    "full": FULL,
    "bare output wrapped": {"start": [[1, {}]], "1": {"output": 2}, "2": {}},
    "null output wrapped": {"start": [[1, {}]], "1": {"output": None}},
    "string output wrapped": {"start": [[1, {}]], "1": {"output": "2"}},
    "dict output untouched": {"start": [[1, {}]], "1": {"output": {"a": 2, "b": [3]}}},
    "step error not wrapped": {"start": [[1, {}]], "1": {"error": 2}, "2": {}},
    "zero key kept": {"start": [[1, {}]], "1": {}, "0": {"output": 5}},
    "negative and padded ids": {"start": [[-1, {}]], "-1": {"output": 7}, "007": {}},
    "start only": {"start": [[1, "payload"]]},
    "error only": {"error": [1, 2]},
}


@pytest.mark.parametrize("data", LOAD_CASES.values(), ids=LOAD_CASES.keys())
def test_wire_form_matches_reference(data: dict[str, Any]) -> None:
    assert _wire(Recipe(data)) == _wire(Reference(copy.deepcopy(data)))
    text = json.dumps(data)
    assert _wire(Recipe(text)) == _wire(Reference(text))
    assert Recipe(data).to_dict() == _wire(Reference(copy.deepcopy(data)))


def test_round_trip_keeps_unknown_step_keys() -> None:
    text = Recipe(FULL).serialize()
    again = Recipe(text)
    assert again == Recipe(FULL)
    step = again[1]
    for key in ("wrapper", "transport-delay", "exchange", "custom-key", "service"):
        assert step[key] == FULL["1"][key]
    assert again[3]["something_else"] == 42
    # The reference reads our text as it reads its own.
    assert _wire(Reference(text)) == _wire(Reference(json.dumps(FULL)))
    assert json.loads(text) == _wire(Reference(json.dumps(FULL)))


def test_normalised_shapes() -> None:
    recipe = Recipe(FULL)
    assert set(recipe.steps) == {1, 2, 3}
    assert all(isinstance(step_id, int) for step_id in recipe.steps)
    assert recipe.steps[1]["output"] == [2]
    assert recipe.steps[2]["output"] == {"ok": [3], "other": 3}
    assert recipe.start == [(1, {"file": "x.cbf"}), (1, ["list", "payload"]), (2, None)]
    assert all(isinstance(entry, tuple) for entry in recipe.start)
    assert recipe.error == [3]
    wire = recipe.to_dict()
    assert wire["start"] == [[1, {"file": "x.cbf"}], [1, ["list", "payload"]], [2, None]]
    assert set(wire) == {"start", "error", "1", "2", "3"}


def test_access() -> None:
    recipe = Recipe(FULL)
    assert recipe[1] is recipe.steps[1]
    assert recipe["2"] is recipe.steps[2]
    assert recipe["start"] is recipe.start
    assert recipe["error"] == [3]
    assert recipe.get(9) is None
    assert recipe.get("9", "default") == "default"
    assert recipe.get(3)["queue"] == "archive"
    assert "start" in recipe
    assert "error" in recipe
    assert 1 in recipe
    assert "1" in recipe
    assert 4 not in recipe
    assert "foo" not in recipe
    with pytest.raises(KeyError):
        recipe[4]
    with pytest.raises(KeyError):
        recipe["foo"]


def test_missing_start_and_error() -> None:
    recipe = Recipe({"1": {}})
    assert recipe.start is None
    assert recipe.error is None
    assert "start" not in recipe
    assert "error" not in recipe
    with pytest.raises(KeyError):
        recipe["start"]


@pytest.mark.parametrize("empty", [None, {}, "", "  ", "{}"])
def test_empty_recipes(empty: Any) -> None:
    recipe = Recipe(empty)
    assert recipe.is_empty
    assert recipe.to_dict() == {}
    assert recipe.serialize() == "{}"
    assert recipe.steps == {}
    assert recipe.start is None


def test_not_empty() -> None:
    assert not Recipe({"error": []}).is_empty
    assert not Recipe({"start": []}).is_empty


def test_input_is_not_modified() -> None:
    """The reference wraps 'output' in the caller's own step dicts."""
    data = {"start": [[1, {}]], "1": {"output": 2}, "2": {}}
    Reference(data)
    assert data["1"]["output"] == [2]

    data = {"start": [[1, {}]], "1": {"output": 2}, "2": {}}
    original = copy.deepcopy(data)
    recipe = Recipe(data)
    recipe[1]["queue"] = "changed"
    assert data == original


def test_copy_is_deep() -> None:
    recipe = Recipe(FULL)
    duplicate = recipe.copy()
    assert duplicate == recipe
    duplicate[1]["parameters"]["nested"]["a"].append(9)
    duplicate.start.append((3, {}))
    assert recipe == Recipe(FULL)
    assert Recipe(recipe) == recipe
    assert Recipe(recipe)[1] is not recipe[1]


def test_equality() -> None:
    recipe = Recipe(FULL)
    assert recipe == Recipe(json.dumps(FULL))
    assert recipe == FULL
    assert recipe == json.dumps(FULL)
    assert recipe != Recipe({"start": [[1, {}]], "1": {}})
    assert recipe != {"foo": {}}
    assert recipe != 5
    assert Recipe() == Recipe({})
    with pytest.raises(TypeError):
        hash(recipe)


def test_repr_shows_the_wire_form() -> None:
    text = repr(Recipe({"start": [[1, {}]], "1": {"queue": "q"}}))
    assert text == "Recipe({'start': [[1, {}]], '1': {'queue': 'q'}})"


def test_serialize_is_plain_json_dumps_with_decimals_as_floats() -> None:
    recipe = Recipe({"start": [[1, {"v": Decimal("1.5"), "u": "é"}]], "1": {}})
    assert recipe.serialize() == '{"start": [[1, {"v": 1.5, "u": "\\u00e9"}]], "1": {}}'
    with pytest.raises(TypeError):
        Recipe({"start": [[1, {"v": object()}]], "1": {}}).serialize()
    assert json.loads(recipe.pretty()) == json.loads(recipe.serialize())


def test_tuples_in_payloads_become_lists_in_wire_form() -> None:
    recipe = Recipe({"start": [(1, ("a", ("b",)))], "1": {}})
    assert recipe.to_dict() == {"start": [[1, ["a", ["b"]]]], "1": {}}
    assert recipe == Recipe(recipe.serialize())


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"start": [[1, {}]], 1: {}, "1": {}}, "step 1 is defined twice"),
        ({"start": [[1, {}]], "x1": {}}, "top-level key 'x1'"),
    ],
)
def test_load_errors(data: Any, names: str) -> None:
    with pytest.raises(InvalidRecipe, match=names):
        Recipe(data)


def test_bytes_json() -> None:
    assert Recipe(json.dumps(FULL).encode()) == Recipe(FULL)
