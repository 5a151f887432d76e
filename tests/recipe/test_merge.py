"""merge() numbers and links steps exactly as python-workflows does, without its side effects."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from workflows.recipe import Recipe as Reference

from zocalo.errors import InvalidRecipe
from zocalo.recipe import Recipe

A = {
    "start": [[1, {"a": 1}]],
    "1": {"queue": "qa1", "output": {"good": [2], "bad": 2}},
    "2": {"queue": "qa2", "error": []},
}
A_NULL_ERROR = {**A, "2": {"queue": "qa2", "error": None}}
B = {
    "start": [[1, {"b": 1}], [3, "payload"]],
    "1": {"queue": "qb1", "output": {"x": [2, 3]}, "error": 3},
    "2": {"queue": "qb2", "exchange": "ex", "wrapper": {"task_information": "t"}},
    "3": {"queue": "qb3", "transport-delay": 1},
    "error": [3],
}
C = {"start": [[1, {}]], "1": {"queue": "qc1", "error": [2]}, "2": {"queue": "qc2"}, "error": [2]}
UNSORTED = {
    "start": [[7, {}]],
    "7": {"output": 2},
    "2": {"output": [5]},
    "5": {},
}
NEGATIVE_ONLY = {"start": [[-3, {}]], "-3": {"queue": "minus three"}}
WITH_ERROR_ONLY_IN_A = {"start": [[1, {}]], "1": {}, "4": {"queue": "err"}, "error": [4]}


def _wire(recipe: Any) -> Any:
    return json.loads(recipe.serialize())


def _reference_chain(*parts: dict[str, Any]) -> Any:
    # Fresh objects each time: the reference merge modifies its inputs.
    result = Reference(copy.deepcopy(parts[0]))
    for part in parts[1:]:
        result = result.merge(Reference(copy.deepcopy(part)))
    return _wire(result)


def _our_chain(*parts: dict[str, Any]) -> Any:
    result = Recipe(parts[0])
    for part in parts[1:]:
        result = result.merge(Recipe(part))
    return _wire(result)


CHAINS = {
    "a+b": (A, B),
    "b+a": (B, A),
    "a+b+c": (A, B, C),
    "c+b+a": (C, B, A),
    "b+c (both have error)": (B, C),
    "error only in first": (WITH_ERROR_ONLY_IN_A, A),
    "error only in second": (A, WITH_ERROR_ONLY_IN_A),
    "unsorted ids keep their order": (A, UNSORTED),
    "large ids in first": (UNSORTED, B),
    "ids below 1 in first: numbering starts at 2": (NEGATIVE_ONLY, C),
}


@pytest.mark.parametrize("parts", CHAINS.values(), ids=CHAINS.keys())
def test_merge_matches_reference(parts: tuple[dict[str, Any], ...]) -> None:
    merged = _our_chain(*parts)
    assert merged == _reference_chain(*parts)
    Recipe(merged).validate()


def test_merge_example_ids() -> None:
    """COMPAT 1.5: a = {1,2}, b = {1,2,3} -> 3,4,5; a further c = {1,2} -> 6,7."""
    merged = Recipe(A).merge(Recipe(B)).merge(Recipe(C))
    assert list(merged.steps) == [1, 2, 3, 4, 5, 6, 7]
    assert merged[3] == {"queue": "qb1", "output": {"x": [4, 5]}, "error": 5}
    assert merged[6] == {"queue": "qc1", "error": [7]}
    assert merged.start == [(1, {"a": 1}), (3, {"b": 1}), (5, "payload"), (6, {})]
    assert merged.error == [5, 7]


def test_numbering_starts_at_two_at_least() -> None:
    assert list(Recipe(NEGATIVE_ONLY).merge(Recipe(C)).steps) == [-3, 2, 3]


def test_renumbering_follows_key_order() -> None:
    merged = Recipe(A).merge(Recipe(UNSORTED))
    assert {step_id: merged[step_id].get("output") for step_id in (3, 4, 5)} == {
        3: [4],
        4: [5],
        5: None,
    }
    assert merged.start[-1] == (3, {})


def test_mixed_key_types_number_like_the_reference() -> None:
    """Already-int keys come before converted string keys (reference load order)."""
    second = {"start": [[1, {}]], "1": {"output": 9}, 9: {"queue": "nine"}}
    ours = Recipe(A).merge(Recipe(second))
    reference = Reference(copy.deepcopy(A)).merge(Reference(copy.deepcopy(second)))
    assert _wire(ours) == _wire(reference)
    assert ours[3] == {"queue": "nine"}


def test_merge_does_not_modify_either_recipe() -> None:
    first, second = Recipe(A), Recipe(B)
    first.merge(second)
    assert first == Recipe(A)
    assert second == Recipe(B)
    # Unlike the reference, which grows its own recipe:
    reference = Reference(copy.deepcopy(A))
    reference.merge(Reference(copy.deepcopy(B)))
    assert 3 in reference


def test_merge_result_is_independent() -> None:
    first, second = Recipe(A), Recipe(B)
    merged = first.merge(second)
    merged[1]["queue"] = "changed"
    merged[3]["output"]["x"].append(1)
    assert first[1]["queue"] == "qa1"
    assert second[1]["output"] == {"x": [2, 3]}


def test_null_step_error_survives_merge() -> None:
    """The reference crashes (KeyError None) merging a recipe whose step has error: null."""
    Recipe(A_NULL_ERROR).validate()
    with pytest.raises(KeyError):
        Reference(copy.deepcopy(B)).merge(Reference(copy.deepcopy(A_NULL_ERROR)))
    merged = Recipe(B).merge(Recipe(A_NULL_ERROR))
    assert merged[5] == {"queue": "qa2", "error": None}
    assert merged[4]["output"] == {"good": [5], "bad": 5}


@pytest.mark.parametrize("empty", [None, "", {}, Recipe()])
def test_merge_with_empty(empty: Any) -> None:
    assert Recipe(A).merge(empty) == Recipe(A)
    assert Recipe(A).merge(empty) is not None
    if not isinstance(empty, dict):  # the reference needs a Recipe or string
        reference_empty = Reference() if isinstance(empty, Recipe) else empty
        reference = Reference(copy.deepcopy(A)).merge(reference_empty)
        assert _wire(Recipe(A).merge(empty)) == _wire(reference)


def test_empty_merged_with_other_copies_without_renumbering() -> None:
    merged = Recipe().merge(Recipe(UNSORTED))
    assert list(merged.steps) == [7, 2, 5]
    assert _wire(merged) == _wire(Reference().merge(Reference(copy.deepcopy(UNSORTED))))
    # no validation on this path, as in the reference
    assert Recipe().merge(Recipe({"1": {}})) == Recipe({"1": {}})


def test_merge_accepts_json_text() -> None:
    assert Recipe(A).merge(json.dumps(B)) == Recipe(A).merge(Recipe(B))


@pytest.mark.parametrize("bad_first", [True, False])
def test_merge_validates_both(bad_first: bool) -> None:
    bad = {"start": [[1, {}]], "1": {"output": 5}}
    first, second = (bad, A) if bad_first else (A, bad)
    with pytest.raises(Exception):  # noqa: B017 - the reference raises workflows.Error
        Reference(copy.deepcopy(first)).merge(Reference(copy.deepcopy(second)))
    with pytest.raises(InvalidRecipe, match="step 1 field 'output' links to step 5"):
        Recipe(first).merge(Recipe(second))
