"""Decoding received recipe messages: every malformed message is InvalidMessage, nothing else.

A service dead-letters an InvalidMessage at once with one log line; any other
exception would count as a crashing handler and be retried with a traceback.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from workflows.recipe import Recipe as Reference

from zocalo.errors import InvalidMessage, InvalidRecipe
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import MAX_NESTING, RecipeMessage, decode, decode_json, nesting

STEPS = {
    "1": {"queue": "one", "output": {"next": 2}, "error": 3},
    "2": {"queue": "two", "output": [3]},
    "3": {"queue": "three", "topic": "three.topic"},
}
RECIPE = {**STEPS, "start": [[1, {}]]}


def body(recipe: Any = None, pointer: Any = 1, path: Any = None, **extra: Any) -> str:
    message = {"recipe": RECIPE if recipe is None else recipe, "recipe-pointer": pointer}
    if path is not None:
        message["recipe-path"] = path
    return json.dumps({**message, "environment": {"ID": "r-1"}, "payload": {}, **extra})


def with_step(step_id: str, **fields: Any) -> dict[str, Any]:
    """RECIPE with ``fields`` set on step ``step_id``."""
    recipe = copy.deepcopy(RECIPE)
    recipe[step_id].update(fields)
    return recipe


def refused(text: str | bytes, max_hops: int | None = None) -> str:
    with pytest.raises(InvalidMessage) as caught:
        decode(text, {}, "message m-1", max_hops=max_hops)
    reason = str(caught.value)
    assert reason.startswith("message m-1: "), "the reason names the message"
    assert len(reason) < 600, "a hostile value is shown cut short, not in full"
    return reason


def test_a_good_message_decodes():
    message = decode(body(path=[5]), {}, "m")
    assert (message.pointer, message.path, message.recipe_id) == (1, [5], "r-1")


# -- deep nesting -------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 999, 1000, 5000, 200_000])
@pytest.mark.parametrize("where", ["payload", "environment", "recipe step", "whole body"])
def test_deep_nesting_is_invalid_input(depth: int, where: str):
    deep = "[" * depth + "]" * depth
    text = {
        "payload": body().replace('"payload": {}', f'"payload": {deep}'),
        "environment": body().replace('{"ID": "r-1"}', f'{{"ID": "r-1", "x": {deep}}}'),
        "recipe step": body().replace('"queue": "two"', f'"queue": "two", "x": {deep}'),
        "whole body": deep,
    }[where]
    assert "nested" in refused(text)


def test_nesting_up_to_the_limit_is_fine_and_counted_without_recursion():
    deep = "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1)
    message = decode(body().replace('"payload": {}', f'"payload": {deep}'), {}, "m")
    assert nesting(message.payload) == MAX_NESTING - 1
    assert nesting([{"a": [1]}, 2]) == 3 and nesting(5) == 0
    many = json.dumps([{"a": [1]}] * 500)  # many brackets, little depth
    assert decode_json(many, "m")[0] == {"a": [1]}


@pytest.mark.parametrize(
    "text",
    [b"\xff\xfe", b'{"recipe": ', "1" + "0" * 5000, b"[1, 2,"],
    ids=["not-utf8", "truncated", "integer-too-long", "unterminated"],
)
def test_unparseable_bodies_are_invalid_input(text):
    assert "JSON" in refused(text)


# -- wrong-typed pointer and path -----------------------------------------------


@pytest.mark.parametrize(
    "pointer",
    [True, False, 1.5, 1.0, "x", "1.0", [1], {"1": 1}, None, 1e400, "1" + "0" * 5000],
    ids=repr,
)
def test_a_pointer_that_is_no_step_id_is_invalid_input(pointer: Any):
    assert "bad recipe-pointer" in refused(body(pointer=pointer))


def test_a_pointer_as_decimal_text_is_read_like_the_reference():
    assert decode(body(pointer="2"), {}, "m").pointer == 2


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ([True], "bad recipe-path entry"),
        ([1, "x"], "bad recipe-path entry"),
        ([[1]], "bad recipe-path entry"),
        ([1e400], "bad recipe-path entry"),
        (5, "bad recipe-path"),
        ({"1": 2}, "bad recipe-path"),
    ],
    ids=repr,
)
def test_a_path_that_is_no_list_of_step_ids_is_invalid_input(path: Any, names: str):
    assert names in refused(body(path=path))


# -- wrong-typed links and destinations -----------------------------------------


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"output": ["a"]}, "step 1 field 'output' has an invalid link 'a'"),
        ({"output": [[2]]}, "step 1 field 'output' has an invalid link [2]"),
        ({"output": {"next": "2"}}, "step 1 field 'output' channel 'next'"),
        ({"output": {"next": [2.0]}}, "step 1 field 'output' channel 'next'"),
        ({"output": 1.5}, "step 1 field 'output' has an invalid link 1.5"),
        ({"output": [9]}, "step 1 field 'output' links to step 9, which does not exist"),
        ({"error": "3"}, "step 1 field 'error'"),
        ({"error": 7}, "step 1 field 'error' links to step 7, which does not exist"),
        ({"queue": 5}, "step 1 field 'queue' must be a name"),
        ({"topic": ["t"]}, "step 1 field 'topic' must be a name"),
        ({"transport-delay": -1}, "step 1 field 'transport-delay'"),
        ({"transport-delay": "soon"}, "step 1 field 'transport-delay'"),
        ({"transport-delay": [1]}, "step 1 field 'transport-delay'"),
        ({"transport-delay": True}, "step 1 field 'transport-delay'"),
        # Longer than any transport delays a message: every send to the step would fail.
        ({"transport-delay": 1e10}, "step 1 field 'transport-delay' must be a number of seconds"),
    ],
    ids=repr,
)
def test_links_and_destinations_the_step_cannot_use_are_invalid_input(fields, names):
    reason = refused(body(recipe=with_step("1", **fields)))
    assert "invalid recipe" in reason and names in reason


def test_a_destination_the_step_sends_to_is_checked_too():
    reason = refused(body(recipe=with_step("2", queue={"name": "two"})))
    assert "step 2 field 'queue' must be a name" in reason


def test_a_huge_bad_link_is_shown_cut_short():
    reason = refused(body(recipe=with_step("1", output=["x" * 100_000, *range(10_000)])))
    assert "invalid link 'xxxx" in reason


def test_steps_this_message_cannot_reach_are_not_walked():
    """Only the step a message is at, and its targets, are checked (not the whole graph)."""
    recipe = with_step("3", output="nonsense")
    assert decode(body(recipe=recipe, pointer=1), {}, "m").pointer == 1
    assert "step 3 field 'output'" in refused(body(recipe=recipe, pointer=3))


# -- booleans are not step ids --------------------------------------------------


@pytest.mark.parametrize("output", [[True], True, {"next": True}, {"next": [2, False]}], ids=repr)
def test_boolean_links_are_invalid_input(output: Any):
    reason = refused(body(recipe=with_step("1", output=output)))
    assert "true and false are not step ids" in reason


@pytest.mark.parametrize(
    ("recipe", "names"),
    [
        ({"start": [[2, {}]], "2": {"output": [True]}, "1": {}}, "step 2 field 'output'"),
        ({"start": [[2, {}]], "2": {"output": True}, "1": {}}, "step 2 field 'output'"),
        ({"start": [[2, {}]], "2": {"output": {"a": True}}, "1": {}}, "step 2 field 'output'"),
        ({"start": [[2, {}]], "2": {"error": True}, "1": {}}, "step 2 field 'error'"),
        ({"start": [[True, {}]], "1": {}}, "field 'start' entry 1 links to True"),
        ({"start": [[2, {}]], "1": {}, "2": {}, "error": [True]}, "field 'error' links to True"),
    ],
    ids=["output-list", "output-bare", "output-channel", "step-error", "start", "error"],
)
def test_validation_refuses_booleans_where_the_reference_reads_step_1(recipe, names):
    """python-workflows takes ``true`` as step 1 (``True == 1``); we refuse it by name."""
    try:
        Reference(copy.deepcopy(recipe)).validate()
    except Exception as error:  # the reference's own refusal would make this test moot
        pytest.fail(f"the reference refuses this too: {error}")
    with pytest.raises(InvalidRecipe) as caught:
        Recipe(recipe).validate()
    assert names in str(caught.value)
    assert "not step ids" in str(caught.value)


def test_a_step_handle_refuses_to_follow_a_boolean_link():
    recipe = Recipe({"start": [[1, {}]], "1": {"queue": "a", "output": [True]}})
    step = RecipeStep(RecipeMessage(recipe, 1, [], {}, None))
    with pytest.raises(InvalidRecipe, match="not step ids"):
        step.send({})
    assert step.outputs == []


# -- runaway loops --------------------------------------------------------------


def test_a_step_linking_to_itself_is_a_runaway_loop_before_its_first_hop():
    reason = refused(body(recipe={"start": [[1, {}]], "1": {"queue": "a", "output": [1]}}))
    assert "runaway loop: step 1 links back to step 1" in reason


def test_a_step_linking_back_onto_the_path_is_a_runaway_loop():
    recipe = {**STEPS, "2": {"queue": "two", "output": {"again": 1}}, "start": [[1, {}]]}
    assert decode(body(recipe=recipe, pointer=1), {}, "m").pointer == 1
    reason = refused(body(recipe=recipe, pointer=2, path=[1]))
    assert "runaway loop: step 2 links back to step 1" in reason
    assert "(1 -> 2 -> 1)" in reason


def test_a_checkpoint_is_not_a_loop():
    """A checkpoint returns to the same step with the same path: that is polling."""
    message = decode(body(pointer=2, path=[1]), {}, "m")
    step = RecipeStep(message)
    step.checkpoint({"again": True})
    (checkpointed,) = step.outputs
    again = decode(checkpointed.body, checkpointed.headers, "m")
    assert (again.pointer, again.path) == (2, [1])


def test_a_path_longer_than_the_hop_limit_is_a_runaway_loop():
    assert decode(body(pointer=2, path=[1] * 10), {}, "m", max_hops=10).path == [1] * 10
    reason = refused(body(pointer=2, path=[1] * 11), max_hops=10)
    assert "runaway loop: its recipe-path has 11 hops, more than the limit of 10" in reason
    assert decode(body(pointer=2, path=[1] * 5000), {}, "m").pointer == 2, "no limit by default"


# -- not a recipe message at all ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[1]", "not an object"),
        ('{"payload": 1}', "missing recipe, recipe-pointer"),
        (body(recipe=[1, 2]), "invalid recipe"),
        (body(recipe={"start": 5, "1": {}}), "invalid recipe"),
        (body(recipe={"start": [[1, {}]], "x": {}}), "invalid recipe"),
        (body(environment=[1]), "environment is a list"),
    ],
    ids=["list", "no-recipe-keys", "recipe-list", "bad-start", "bad-key", "bad-environment"],
)
def test_bodies_that_are_not_recipe_messages(text: str, names: str):
    assert names in refused(text)
