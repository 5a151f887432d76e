"""The step handle: where sends go, what they carry, and what is refused."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from zocalo.errors import ZocaloError
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import RecipeMessage, Reply
from zocalo.transport import create_transport

RECIPE = Recipe(
    {
        "1": {
            "queue": "first",
            "parameters": {"beamline": "i03"},
            "output": {"good": [2, 3], "bad": 4},
        },
        "2": {"queue": "two", "output": 5},
        "3": {"topic": "three", "transport-delay": 4},
        "4": {"queue": "four", "topic": "four.topic"},
        "5": {"queue": "five"},
        "start": [[1, {"a": 1}], [1, {"a": 2}]],
        "error": [4],
    }
)


def step_at(pointer: int, path: list[int] | None = None) -> RecipeStep:
    message = RecipeMessage(RECIPE, pointer, path or [], {"ID": "abc"}, None)
    return RecipeStep(message, message_id="m-1")


def decoded(step: RecipeStep) -> list[tuple[str, bool, dict]]:
    return [(o.destination, o.broadcast, json.loads(o.body)) for o in step.outputs]


def test_handle_exposes_parameters_recipe_id_and_environment():
    step = step_at(1)
    assert step.parameters == {"beamline": "i03"}
    assert step.recipe_id == "abc"
    assert step.environment == {"ID": "abc"}
    assert step.pointer == 1


def test_send_to_a_channel_fans_out_to_every_linked_step():
    step = step_at(1, path=[7])
    assert step.send_to("good", {"x": 1}) == 2
    (queue, is_topic_2, two), (topic, is_topic_3, three) = decoded(step)
    assert (queue, is_topic_2, two["recipe-pointer"]) == ("two", False, 2)
    assert (topic, is_topic_3, three["recipe-pointer"]) == ("three", True, 3)
    assert two["recipe-path"] == three["recipe-path"] == [7, 1]
    assert two["payload"] == {"x": 1}
    assert step.outputs[0].headers == {"workflows-recipe": True}


def test_transport_delay_of_the_destination_applies_unless_caller_gives_one():
    step = step_at(1)
    step.send_to("good", 1)
    assert [o.delay for o in step.outputs] == [None, 4.0]
    other = step_at(1)
    other.send_to("good", 1, delay=0.5)
    assert [o.delay for o in other.outputs] == [0.5, 0.5]


def test_step_with_queue_and_topic_sends_both():
    step = step_at(1)
    assert step.send_to("bad", "oops") == 2
    assert [(o.destination, o.broadcast) for o in step.outputs] == [
        ("four", False),
        ("four.topic", True),
    ]


def test_send_on_unnamed_output_and_on_a_step_without_output():
    step = step_at(2)
    assert step.send("on") == 1
    assert decoded(step)[0][2]["recipe-pointer"] == 5
    end = step_at(5)
    assert end.send("nowhere") == 0
    assert end.unrouted == [], "the end of a chain is not a routing mistake"


def test_unknown_channel_is_logged_and_recorded(caplog):
    step = step_at(1)
    with caplog.at_level(logging.WARNING):
        assert step.send_to("missing", 1) == 0
    assert step.outputs == []
    assert len(step.unrouted) == 1 and "'missing'" in step.unrouted[0]
    assert "missing" in caplog.text and "abc" in caplog.text and "['bad', 'good']" in caplog.text


def test_send_on_named_outputs_needs_a_default_channel():
    step = step_at(1)
    assert step.send(1) == 0
    assert step.unrouted
    step.set_default_channel("bad")
    assert step.send(1) == 2


def test_checkpoint_returns_to_the_same_step_with_delay_and_unchanged_path():
    step = step_at(2, path=[1])
    step.checkpoint({"poll": 1}, delay=30)
    (message,) = step.outputs
    body = json.loads(message.body)
    assert (message.destination, message.delay) == ("two", 30)
    assert (body["recipe-pointer"], body["recipe-path"]) == (2, [1])


def test_start_sends_every_start_entry_with_empty_path_and_a_recipe_id():
    step = RecipeStep()
    recipe_id = step.start(RECIPE)
    assert len(recipe_id) == 36
    bodies = [json.loads(o.body) for o in step.outputs]
    assert [b["payload"] for b in bodies] == [{"a": 1}, {"a": 2}]
    assert all(b["recipe-path"] == [] and b["recipe-pointer"] == 1 for b in bodies)
    assert all(b["environment"] == {"ID": recipe_id} for b in bodies)
    kept = RecipeStep()
    assert kept.start(RECIPE, environment={"ID": "given"}) == "given"


def test_start_refuses_an_invalid_recipe():
    with pytest.raises(ValueError, match="Invalid recipe"):
        RecipeStep().start({"1": {"queue": "x"}, "start": [[2, {}]]})


def test_unknown_send_options_are_refused():
    with pytest.raises(TypeError, match="unknown send options"):
        step_at(2).send(1, colour="blue")


def test_send_with_transaction_none_is_collected():
    step = step_at(2)
    assert step.send({"x": 1}, transaction=None) == 1
    assert [destination for destination, _, _ in decoded(step)] == ["five"]


def test_send_in_a_transaction_needs_the_steps_transport():
    step = step_at(2)
    with pytest.raises(ValueError, match="no transport"):
        step.send({"x": 1}, transaction=1)
    assert step.outputs == []


def test_sends_in_a_transaction_go_out_on_commit_not_with_the_outputs(collector):
    with create_transport(f"memory://step-txn-{uuid.uuid4().hex}") as transport:
        received = collector(ack_with=transport)
        message = RecipeMessage(RECIPE, 2, [1], {"ID": "abc"}, None)
        step = RecipeStep(message, message_id="m-1", transport=transport)

        dropped = transport.transaction_begin()
        step.send({"x": "dropped"}, transaction=dropped)
        transport.transaction_abort(dropped)
        with pytest.raises(ZocaloError, match=f"transaction {dropped}"):
            step.checkpoint({"x": 2}, transaction=dropped)  # it is over

        txn = transport.transaction_begin()
        assert step.send({"x": 1}, transaction=txn) == 1
        step.send_plain("five", {"plain": True}, transaction=txn)
        assert step.outputs == []  # the transaction's, not the runner's
        assert transport.depth("five") == 0  # not before the commit
        transport.transaction_commit(txn)

        transport.subscribe("five", received)
        first, second = received.wait_for_count(2)
        body = json.loads(first.body)
        assert (body["payload"], body["recipe-pointer"], body["recipe-path"]) == (
            {"x": 1},
            5,
            [1, 2],
        )
        assert json.loads(second.body) == {"plain": True}
        assert transport.depth("five") == 0  # nothing from the aborted transaction


def replying_step(environment: dict) -> RecipeStep:
    message = RecipeMessage(RECIPE, 2, [1], environment, None)
    return RecipeStep(message, message_id="m-2")


def test_a_reply_goes_to_the_environments_reply_queue_as_a_droppable_output():
    step = replying_step({"ID": "abc", "zocalo_reply_to": "zocalo.reply.x"})
    assert step.reply({"spots": 3}) == 1
    step.send({"on": True})
    (reply, onward) = step.outputs
    assert (reply.destination, reply.droppable, reply.broadcast) == ("zocalo.reply.x", True, False)
    assert json.loads(reply.body) == {"recipe_id": "abc", "step": 2, "payload": {"spots": 3}}
    assert Reply.decode(reply.body, "reply") == Reply({"spots": 3}, "abc", 2)
    assert reply.headers == {
        "zocalo-sender-recipe": "abc",
        "zocalo-sender-step": 2,
        "zocalo-reply-id": "m-2#1",
    }, "who sent it, for the log line if it is dropped; its identity; and no recipe message"
    assert (onward.destination, onward.droppable) == ("five", False)


def test_each_reply_of_a_handling_has_its_own_identity_the_same_when_handled_again():
    """The input's message id and the reply's number: a redelivered input, handled again
    by a new step, gives its replies the same identities; one without an id, none."""
    environment = {"ID": "abc", "zocalo_reply_to": "zocalo.reply.x"}

    def identities(step: RecipeStep) -> list[str | None]:
        step.reply("first")
        step.reply("second")
        return [reply.headers.get("zocalo-reply-id") for reply in step.outputs]

    assert identities(replying_step(environment)) == ["m-2#1", "m-2#2"]
    assert identities(replying_step(environment)) == ["m-2#1", "m-2#2"], "handled again"
    unnamed = RecipeStep(RecipeMessage(RECIPE, 2, [1], environment, None))
    assert identities(unnamed) == [None, None]


def test_a_reply_nobody_waits_for_sends_nothing_and_is_no_mistake():
    step = replying_step({"ID": "abc"})
    assert step.reply({"spots": 3}) == 0
    assert step.outputs == [] and step.unrouted == []
    plain = RecipeStep(None, message_id="m-3")
    assert plain.reply("x") == 0 and plain.outputs == []


@pytest.mark.parametrize("reply_to", ["", 7, ["zocalo.reply.x"]])
def test_a_reply_queue_that_is_no_queue_name_is_logged_and_recorded(reply_to, caplog):
    step = replying_step({"ID": "abc", "zocalo_reply_to": reply_to})
    with caplog.at_level(logging.WARNING, logger="zocalo.recipe.step"):
        assert step.reply("x") == 0
    assert step.outputs == []
    (unrouted,) = step.unrouted
    assert "zocalo_reply_to" in unrouted and "not a queue name" in unrouted
    assert "sent nothing" in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        b"[1]",
        b'{"no": "payload"}',
        b'{"payload": 1, "step": true}',
        b'{"payload": 1, "recipe_id": 5}',
    ],
)
def test_what_is_not_a_reply_is_refused_in_one_line(body):
    with pytest.raises(ZocaloError, match="not a reply") as caught:
        Reply.decode(body, "message 9")
    assert "message 9" in str(caught.value) and "\n" not in str(caught.value)
