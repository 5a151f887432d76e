"""Parameter substitution gives python-workflows' results, and clear errors where it crashes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from workflows.recipe import Recipe as Reference

from zocalo.errors import InvalidRecipe
from zocalo.recipe import Recipe, substitute

PARAMS: dict[str, Any] = {
    "x": "5",
    "n": 42,
    "f": 2.5,
    "t": True,
    "nothing": None,
    "s": "abc",
    "l": [1, 2, {"deep": "v"}],
    "d": {"k": "v", "inner": {"z": 3}, "list": [7, 8]},
    "next": 2,
    "ENT": "cut",
}


def _recipe(step: dict[str, Any], payload: Any = None) -> dict[str, Any]:
    return {"start": [[1, payload]], "1": {"output": [2], **step}, "2": {}}


def _applied_wire(cls: type, data: dict[str, Any], params: dict[str, Any]) -> Any:
    recipe = cls(copy.deepcopy(data))
    recipe.apply_parameters(copy.deepcopy(params))
    return json.loads(recipe.serialize())


SAME_AS_REFERENCE = {
    "plain value": _recipe({"parameters": {"a": "{x}"}}),
    "dict key known, value unknown": _recipe({"parameters": {"{x}": "{y}"}}),
    "dict key unknown, value known": _recipe({"parameters": {"{y}": "{x}"}}),
    "unknown index chain kept": _recipe({"parameters": {"a": "{y[a][b]} and {y[c]}"}}),
    "unknown empty name with index": _recipe({"parameters": {"a": "{[a]}"}}),
    "index into known dict": _recipe({"parameters": {"a": "{d[k]}", "b": "{d[inner][z]}"}}),
    "index into known list": _recipe({"parameters": {"a": "{l[0]}-{d[list][1]}"}}),
    "python rendering": _recipe({"parameters": {"a": "{t} {nothing} {f} {n} {l} {d}"}}),
    "replace list keeps type": _recipe({"parameters": {"a": "{$REPLACE:l}"}}),
    "replace dict keeps type": _recipe({"parameters": {"a": "{$REPLACE:d}"}}),
    "replace int, bool, null": _recipe(
        {"parameters": {"a": "{$REPLACE:n}", "b": "{$REPLACE:t}", "c": "{$REPLACE:nothing}"}}
    ),
    "replace indexed": _recipe(
        {"parameters": {"a": "{$REPLACE:d[inner]}", "b": "{$REPLACE:l[2]}"}}
    ),
    "replace missing is null": _recipe(
        {"parameters": {"a": "{$REPLACE:missing}", "b": "{$REPLACE:d[nope]}"}}
    ),
    "replace with conversion gives repr text": _recipe({"parameters": {"a": "{$REPLACE:s!r}"}}),
    "replace ignores format spec": _recipe({"parameters": {"a": "{$REPLACE:s:>9}"}}),
    "replace prefix without colon": _recipe({"parameters": {"a": "{$REPLACEMENT}"}}),
    "replace in dict key": _recipe({"parameters": {"{$REPLACE:n}": "number key"}}),
    "literal braces unescaped": _recipe({"parameters": {"a": "{{x}}", "b": "}}{{"}}),
    "known format spec and conversion": _recipe(
        {"parameters": {"a": "{n:05d}", "b": "{s!r}", "c": "{f:.3f}"}}
    ),
    "unknown with conversion drops it": _recipe({"parameters": {"a": "{y!r}", "b": "{y!s:>6}"}}),
    "nested lists and dicts": _recipe(
        {"parameters": {"a": [{"b": ["{x}", {"{s}": ["{n}", 1, None, True]}]}]}}
    ),
    "queue and topic names": _recipe({"queue": "per-image.{s}", "topic": "{y}.{x}"}),
    "start payload": _recipe({}, payload={"file": "{s}/{x}.cbf", "{s}": ["{$REPLACE:l}"]}),
    "start payload replaced whole": _recipe({}, payload="{$REPLACE:d}"),
    "output link replaced": {
        "start": [[1, {}]],
        "1": {"output": "{$REPLACE:next}"},
        "2": {"error": ["{$REPLACE:n}"]},
    },
    "top-level error list": {"start": [[1, {}]], "1": {}, "error": ["{x}", 3]},
    "non-strings untouched": _recipe({"parameters": {"a": 1, "b": 2.5, "c": None, "d": False}}),
}


@pytest.mark.parametrize("data", SAME_AS_REFERENCE.values(), ids=SAME_AS_REFERENCE.keys())
def test_apply_parameters_matches_reference(data: dict[str, Any]) -> None:
    ours = _applied_wire(Recipe, data, PARAMS)
    assert ours == _applied_wire(Reference, data, PARAMS)


@pytest.mark.parametrize("data", SAME_AS_REFERENCE.values(), ids=SAME_AS_REFERENCE.keys())
def test_applying_twice_matches_reference(data: dict[str, Any]) -> None:
    # The second round unescapes {{ }} again and fills what the first one left;
    # where a round fails in the reference, ours must fail with InvalidRecipe.
    def twice(cls: type) -> Any:
        recipe = cls(copy.deepcopy(data))
        try:
            recipe.apply_parameters({"x": "{s}"})
            recipe.apply_parameters(PARAMS)
        except Exception as error:
            return type(error) if cls is Recipe else "raised"
        return json.loads(recipe.serialize())

    ours, reference = twice(Recipe), twice(Reference)
    if reference == "raised":
        assert ours is InvalidRecipe
    else:
        assert ours == reference


def test_examples_by_value() -> None:
    """Pin the interesting results, not only equality with the reference."""
    recipe = Recipe(
        _recipe(
            {
                "parameters": {
                    "{x}": "{y[a][b]}",
                    "l": "{$REPLACE:l}",
                    "d": "{$REPLACE:d}",
                    "gone": "{$REPLACE:missing}",
                    "i": "{d[inner][z]}",
                    "lit": "{{x}}",
                    "py": "{t}/{nothing}",
                }
            }
        )
    )
    recipe.apply_parameters(PARAMS)
    assert recipe[1]["parameters"] == {
        "5": "{y[a][b]}",
        "l": [1, 2, {"deep": "v"}],
        "d": {"k": "v", "inner": {"z": 3}, "list": [7, 8]},
        "gone": None,
        "i": "3",
        "lit": "{x}",
        "py": "True/None",
    }


def test_replace_is_a_deep_copy() -> None:
    params = {"l": [[1], {"a": 1}]}
    recipe = Recipe(_recipe({"parameters": {"a": "{$REPLACE:l}", "b": "{$REPLACE:l}"}}))
    recipe.apply_parameters(params)
    recipe[1]["parameters"]["a"][0].append(2)
    assert params == {"l": [[1], {"a": 1}]}
    assert recipe[1]["parameters"]["b"] == [[1], {"a": 1}]


# Inputs on which the reference raises some Python exception; we raise InvalidRecipe.
REFERENCE_RAISES = {
    "unbalanced open": "a{b",
    "unbalanced close": "a}b",
    "unknown with format spec": "{y:>5}",
    "unknown with attribute": "{y.z}",
    "unknown with digit index": "{y[0]}",
    "automatic positional": "{}",
    "numbered positional": "{0}",
    "known dict missing key": "{d[zz]}",
    "known list bad index": "{l[9]}",
    "bad conversion": "{x!z}",
    "known value, unknown spec field": "{n:{y}}",
    "replace index out of range": "{$REPLACE:l[9]}",
    "replace positional": "{$REPLACE:}",
    "replace not the whole string": "x {$REPLACE:l}",
}


@pytest.mark.parametrize("text", REFERENCE_RAISES.values(), ids=REFERENCE_RAISES.keys())
def test_errors_are_invalid_recipe_naming_the_string(text: str) -> None:
    reference = Reference(_recipe({"parameters": {"a": text}}))
    with pytest.raises(Exception):  # noqa: B017 - the reference raises assorted types
        reference.apply_parameters(PARAMS)

    recipe = Recipe(_recipe({"parameters": {"a": text}}))
    with pytest.raises(InvalidRecipe) as caught:
        recipe.apply_parameters(PARAMS)
    message = str(caught.value)
    assert message.startswith("Invalid recipe:")
    assert repr(text) in message
    assert "step 1" in message


def test_error_leaves_recipe_unchanged() -> None:
    recipe = Recipe(_recipe({"parameters": {"a": "{x}", "b": "a{b"}}))
    before = recipe.to_dict()
    with pytest.raises(InvalidRecipe):
        recipe.apply_parameters(PARAMS)
    assert recipe.to_dict() == before


def test_attribute_access_on_known_name_is_refused() -> None:
    """Deliberate difference: the reference renders '<built-in method upper ...>'."""
    reference = Reference(_recipe({"parameters": {"a": "{s.upper}"}}))
    reference.apply_parameters(PARAMS)
    assert reference[1]["parameters"]["a"].startswith("<built-in method")

    recipe = Recipe(_recipe({"parameters": {"a": "{s.upper}"}}))
    with pytest.raises(InvalidRecipe, match="attribute access"):
        recipe.apply_parameters(PARAMS)


def test_replace_key_that_becomes_a_list_is_invalid_recipe() -> None:
    with pytest.raises(InvalidRecipe, match="cannot be a key"):
        substitute({"{$REPLACE:l}": 1}, PARAMS)


def test_replace_with_no_field_is_invalid_recipe() -> None:
    with pytest.raises(InvalidRecipe, match="names no parameter"):
        substitute("{$REPLACE:{}}", PARAMS)


def test_substitute_returns_new_values_and_keeps_tuples() -> None:
    value = {"a": ["{x}", ("{n}", 1)], "{s}": {"b": "{y}"}}
    original = copy.deepcopy(value)
    result = substitute(value, PARAMS)
    assert result == {"a": ["5", ("42", 1)], "abc": {"b": "{y}"}}
    assert isinstance(result["a"][1], tuple)
    assert value == original


def test_substitute_without_parameters_only_unescapes() -> None:
    assert substitute("{a} {{b}}", None) == "{a} {b}"
    assert substitute(7, {}) == 7


def test_substitute_error_names_where() -> None:
    with pytest.raises(InvalidRecipe, match=r"in step 4: "):
        substitute("{", {}, where="step 4")
