"""validate() accepts and rejects exactly what python-workflows does, and says why."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import workflows
from workflows.recipe import Recipe as Reference

from zocalo.errors import InvalidRecipe
from zocalo.recipe import Recipe


def _reference_accepts(data: Any) -> bool:
    try:
        Reference(copy.deepcopy(data)).validate()
    except workflows.Error:
        return False
    return True


VALID = {
    "chain": {"start": [[1, {}]], "1": {"output": 2}, "2": {"output": [3]}, "3": {}},
    "dict outputs with lists": {
        "start": [[1, {"a": 1}]],
        "1": {"output": {"hits": [2, 3], "misses": 4, "none": None}},
        "2": {},
        "3": {},
        "4": {"output": []},
    },
    "nested dict output (reference quirk)": {
        "start": [[1, {}]],
        "1": {"output": {"a": {"b": 2}}},
        "2": {},
    },
    "step and top-level error links": {
        "start": [[1, {}]],
        "1": {"output": 2, "error": 3},
        "2": {"error": [3]},
        "3": {},
        "4": {"output": 5},
        "5": {},
        "error": [4],
    },
    "step error null": {"start": [[1, {}]], "1": {"error": None}},
    "diamond is not a cycle": {
        "start": [[1, {}]],
        "1": {"output": [2, 3]},
        "2": {"output": 4},
        "3": {"output": 4},
        "4": {},
    },
    "two starts on one step": {"start": [[1, None], [1, [1, 2]]], "1": {}},
    "only reached from error": {"start": [[1, {}]], "1": {}, "2": {}, "error": [2]},
    "empty top-level error": {"start": [[1, {}]], "1": {}, "error": []},
    "unknown keys are fine": {
        "start": [[1, {}]],
        "1": {"queue": "q", "wrapper": {"task_information": "x"}, "transport-delay": 3},
    },
    "sparse and large ids": {"start": [[10, {}]], "10": {"output": 200}, "200": {}},
}

# (recipe, text the message must contain)
INVALID: dict[str, tuple[Any, str]] = {
    "empty": ({}, "empty"),
    "start missing": ({"1": {}}, "field 'start' is missing"),
    "start empty": ({"start": [], "1": {}}, "field 'start' is empty"),
    "start entry of three": ({"start": [[1, {}, 3]], "1": {}}, "field 'start' entry 1"),
    "start entry of one": ({"start": [[1, {}], [1]], "1": {}}, "field 'start' entry 2"),
    "start points to start": ({"start": [["start", {}]], "1": {}}, "'start' itself"),
    "start target is a string": (
        {"start": [["1", {}]], "1": {}},
        "field 'start' entry 1 links to step '1', which does not exist",
    ),
    "start target missing": (
        {"start": [[1, {}], [7, {}]], "1": {}},
        "field 'start' entry 2 links to step 7, which does not exist",
    ),
    "error points to start": ({"start": [[1, {}]], "1": {}, "error": ["start"]}, "'start'"),
    "error points to error": ({"start": [[1, {}]], "1": {}, "error": ["error"]}, "'error'"),
    "error target missing": (
        {"start": [[1, {}]], "1": {}, "error": [5]},
        "field 'error' links to step 5, which does not exist",
    ),
    "step id zero": ({"start": [[1, {}]], "1": {}, "0": {}}, "top-level key '0'"),
    "output not an int": ({"start": [[1, {}]], "1": {"output": ["a"]}}, "step 1 field 'output'"),
    "output null": ({"start": [[1, {}]], "1": {"output": None}}, "step 1 field 'output'"),
    "output float": ({"start": [[1, {}]], "1": {"output": 1.5}}, "step 1 field 'output'"),
    "dict output with string list": (
        {"start": [[1, {}]], "1": {"output": {"x": ["2"]}}, "2": {}},
        "step 1 field 'output' channel 'x'",
    ),
    "dict output with string": (
        {"start": [[1, {}]], "1": {"output": {"x": "2"}}, "2": {}},
        "step 1 field 'output' channel 'x'",
    ),
    "step error link not an int": (
        {"start": [[1, {}]], "1": {"error": "2"}, "2": {}},
        "step 1 field 'error'",
    ),
    "dangling output": (
        {"start": [[1, {}]], "1": {"output": 2}, "2": {"output": [3, 9]}, "3": {}},
        "step 2 field 'output' links to step 9, which does not exist",
    ),
    "dangling dict output": (
        {"start": [[1, {}]], "1": {"output": {"a": [9]}}},
        "step 1 field 'output' links to step 9, which does not exist",
    ),
    "dangling step error": (
        {"start": [[1, {}]], "1": {"error": 9}},
        "step 1 field 'error' links to step 9, which does not exist",
    ),
    "self link": ({"start": [[1, {}]], "1": {"output": 1}}, "step 1 field 'output' links back"),
    "cycle": (
        {"start": [[1, {}]], "1": {"output": 2}, "2": {"output": 3}, "3": {"output": [1]}},
        "step 3 field 'output' links back to step 1",
    ),
    "cycle through error link": (
        {"start": [[1, {}]], "1": {"output": 2}, "2": {"error": 1}},
        "step 2 field 'error' links back to step 1",
    ),
    "cycle through dict output": (
        {"start": [[1, {}]], "1": {"output": {"a": 2}}, "2": {"output": {"b": [3, 1]}}, "3": {}},
        "step 2 field 'output' links back to step 1",
    ),
    "cycle reached only from error": (
        {"start": [[1, {}]], "1": {}, "2": {"output": 3}, "3": {"output": 2}, "error": [2]},
        "step 3 field 'output' links back to step 2",
    ),
    "unreferenced node": (
        {"start": [[1, {}]], "1": {"output": 2}, "2": {}, "3": {}},
        "step 3 is never reached",
    ),
    "unreferenced node linking into the graph": (
        {"start": [[1, {}]], "1": {"output": 2}, "2": {}, "4": {"output": 2}},
        "step 4 is never reached",
    ),
}


@pytest.mark.parametrize("data", VALID.values(), ids=VALID.keys())
def test_valid_recipes(data: dict[str, Any]) -> None:
    assert _reference_accepts(data)
    Recipe(data).validate()
    Recipe(Recipe(data).serialize()).validate()  # and after a JSON round trip


@pytest.mark.parametrize(("data", "names"), INVALID.values(), ids=INVALID.keys())
def test_invalid_recipes(data: dict[str, Any], names: str) -> None:
    assert not _reference_accepts(data)
    with pytest.raises(InvalidRecipe) as caught:
        Recipe(data).validate()
    message = str(caught.value)
    assert message.startswith("Invalid recipe: ")
    assert names in message


def test_cycle_message_shows_the_path() -> None:
    data = {"start": [[1, {}]], "1": {"output": 2}, "2": {"output": 1}}
    with pytest.raises(InvalidRecipe, match=r"\(start -> 1 -> 2 -> 1\)"):
        Recipe(data).validate()


def test_invalid_recipe_is_still_a_value_error() -> None:
    with pytest.raises(ValueError, match="Invalid recipe"):
        Recipe({"1": {}}).validate()


def test_parameters_can_make_a_recipe_valid_or_invalid() -> None:
    data = {"start": [[1, {}]], "1": {"output": "{$REPLACE:next}"}, "2": {}}
    for params, accepted in (({"next": 2}, True), ({"next": 3}, False), ({}, False)):
        ours, reference = Recipe(data), Reference(copy.deepcopy(data))
        ours.apply_parameters(params)
        reference.apply_parameters(params)
        try:
            reference.validate()
        except workflows.Error:
            assert not accepted
        else:
            assert accepted
        if accepted:
            ours.validate()
        else:
            with pytest.raises(InvalidRecipe, match="step 1 field 'output'"):
                ours.validate()


# -- where we deliberately differ from the reference --------------------------


def test_bare_int_error_is_accepted() -> None:
    data = {"start": [[1, {}]], "1": {}, "2": {}, "error": 2}
    with pytest.raises(TypeError):
        Reference(copy.deepcopy(data))  # crashes while loading
    recipe = Recipe(data)
    assert recipe.error == [2]
    recipe.validate()
    assert recipe.to_dict()["error"] == [2]


def test_null_error_means_no_error() -> None:
    with pytest.raises(TypeError):
        Reference({"start": [[1, {}]], "1": {}, "error": None})
    recipe = Recipe({"start": [[1, {}]], "1": {}, "error": None})
    assert recipe.error is None
    assert "error" not in recipe.to_dict()


@pytest.mark.parametrize("key", ["foo", "1.5", "", "one"])
def test_non_numeric_key_names_the_key(key: str) -> None:
    data = {"start": [[1, {}]], "1": {}, key: {}}
    with pytest.raises(ValueError) as reference_error:
        Reference(copy.deepcopy(data))
    assert not isinstance(reference_error.value, InvalidRecipe)
    with pytest.raises(InvalidRecipe, match=f"top-level key {key!r}"):
        Recipe(data)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"start": [[1, {}]], "1": "a string"}, "step 1 must be an object"),
        ({"start": [[1, {}]], "1": [2]}, "step 1 must be an object"),
        ({"start": "ab", "1": {}}, "field 'start' must be a list"),
        ({"start": [[1, {}], "ab"], "1": {}}, "field 'start' entry 2"),
        ({"start": [[1, {}]], "1": {}, "error": "1"}, "field 'error' must be"),
    ],
)
def test_shapes_no_valid_recipe_has_are_refused_on_load(data: Any, names: str) -> None:
    """The reference loads these (and accepts non-object steps); we refuse them."""
    Reference(copy.deepcopy(data))
    with pytest.raises(InvalidRecipe, match=names):
        Recipe(data)


def test_start_pointing_at_error_is_refused() -> None:
    """The reference accepts a start entry that targets the top-level 'error' list."""
    data = {"start": [["error", {}]], "error": [1], "1": {}}
    Reference(copy.deepcopy(data)).validate()
    with pytest.raises(InvalidRecipe, match="field 'start' entry 1 links to step 'error'"):
        Recipe(data).validate()


def test_every_problem_is_found_each_once() -> None:
    """A stray key, a cycle, two dangling links, an unreached step: each once, as the
    walk from ``start`` meets them."""
    recipe = Recipe(
        {
            "start": [[1, {}]],
            "1": {"output": [2, 9]},
            "2": {"output": {"a": 3, "b": 9}},
            "3": {"error": 2},
            "4": {},
            "0": {},
        }
    )
    messages = [str(problem) for problem in recipe.problems()]
    assert messages == [
        "Invalid recipe: top-level key '0' is not a step id (non-zero integer)",
        "Invalid recipe: step 3 field 'error' links back to step 2, making a cycle "
        "(start -> 1 -> 2 -> 3 -> 2)",
        "Invalid recipe: step 2 field 'output' links to step 9, which does not exist",
        "Invalid recipe: step 1 field 'output' links to step 9, which does not exist",
        "Invalid recipe: step 4 is never reached from 'start' or 'error' (unreferenced node)",
    ]
    with pytest.raises(InvalidRecipe) as first:
        recipe.validate()
    assert str(first.value) == messages[0], "validate() raises the first problem"


def test_a_step_behind_an_unreadable_link_is_not_called_unreached() -> None:
    recipe = Recipe({"start": [[1, {}]], "1": {"output": ["2"]}, "2": {}})
    assert [str(p) for p in recipe.problems()] == [
        "Invalid recipe: step 1 field 'output' has an invalid link '2' in ['2']"
    ]


def test_examine_reports_every_load_problem_and_stops_there() -> None:
    recipe, problems = Recipe.examine(
        {"start": [[1, {}], "x"], "1": "a string", "foo": {}, "error": "1", "2": {"output": 9}}
    )
    assert recipe is None
    assert [str(problem) for problem in problems] == [
        "Invalid recipe: field 'start' entry 2 is not a [step, payload] pair: 'x'",
        "Invalid recipe: top-level key 'foo' is not 'start', 'error' or a step id",
        "Invalid recipe: field 'error' must be a step id or a list of them, not '1'",
        "Invalid recipe: step 1 must be an object, not 'a string'",
    ]
    loaded, none = Recipe.examine({"start": [[1, {}]], "1": {"queue": "q"}})
    assert loaded is not None and none == []


def test_a_long_chain_of_steps_is_walked_without_recursion() -> None:
    """A generated (or hostile) recipe of many chained steps gets its problem named,
    not a RecursionError from walking one step per Python frame."""
    length = 5000
    data: dict[str, Any] = {str(n): {"queue": "q", "output": n + 1} for n in range(1, length)}
    data[str(length)] = {"queue": "q", "output": 1}  # the end links back: a cycle
    data["start"] = [[1, {}]]
    problems = [str(problem) for problem in Recipe(data).problems()]
    assert len(problems) == 1
    assert problems[0].startswith(
        f"Invalid recipe: step {length} field 'output' links back to step 1, making a cycle"
    )
    del data[str(length)]["output"]
    Recipe(data).validate()
