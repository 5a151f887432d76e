"""Wire interop with the real python-workflows package (PyPI ``workflows``).

A bridge transport subclasses workflows' own OfflineTransport, so messages
are serialised by workflows' code, and hands them to our in-memory broker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import workflows.recipe
from workflows.recipe.wrapper import RecipeWrapper
from workflows.transport.offline_transport import OfflineTransport

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import encode, is_recipe_message
from zocalo.service import Service, handler
from zocalo.transport import Transport

RECIPE = {
    "1": {
        "service": "ours",
        "queue": "interop.ours",
        "parameters": {"n": 2},
        "output": {"next": 2},
    },
    "2": {
        "service": "theirs",
        "queue": "interop.theirs",
        "output": 3,
        "custom-key": {"kept": True},
    },
    "3": {"service": "ours again", "queue": "interop.end"},
    "start": [[1, {"frame": 1}]],
}
ENVIRONMENT = {"ID": "f0e1d2c3", "extra": [1, 2]}


class Bridge(OfflineTransport):
    """workflows' transport API, delivering into a zocalo transport."""

    def __init__(self, target: Transport | None = None) -> None:
        super().__init__()
        self.target = target
        self.sent: list[tuple[str, str, dict]] = []

    def _send(self, destination, message, headers=None, delay=None, expiration=None, **kw):
        self.sent.append((destination, message, dict(headers or {})))
        if self.target is not None:
            self.target.send(destination, message, headers=headers or {})


class Doubler(Service):
    @handler("interop.ours")
    def double(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        step.send_to("next", {"frame": payload["frame"] * step.parameters["n"]})


def test_their_messages_are_decoded_equal_to_ours():
    theirs = workflows.recipe.Recipe(RECIPE)
    bridge = Bridge()
    wrapper = RecipeWrapper(
        message={
            "recipe": theirs.recipe,
            "recipe-pointer": 1,
            "recipe-path": [9],
            "environment": ENVIRONMENT,
            "payload": None,
        },
        transport=bridge,
    )
    wrapper.send_to("next", {"frame": 5})
    ((destination, their_body, their_headers),) = bridge.sent

    ours = encode(Recipe(RECIPE), 2, [9, 1], ENVIRONMENT, {"frame": 5})
    assert destination == "interop.theirs"
    assert json.loads(ours) == json.loads(their_body)
    assert their_headers == {"workflows-recipe": True}
    assert is_recipe_message(their_headers)


@pytest.mark.parametrize("flag", [True, "True", "true", 1])
def test_every_spelling_of_the_recipe_flag_is_accepted(flag):
    assert is_recipe_message({"workflows-recipe": flag})


@pytest.mark.parametrize("flag", [False, "False", 0, None, "yes"])
def test_other_flag_values_are_not_recipe_messages(flag):
    assert not is_recipe_message({"workflows-recipe": flag})


def test_ours_to_theirs_to_ours(client, collector, start_service):
    """Our service sends; workflows' RecipeWrapper forwards; our side receives it intact."""
    start_service(Doubler())
    theirs_inbox = collector(ack_with=client)
    end = collector(ack_with=client)
    client.subscribe("interop.theirs", theirs_inbox)
    client.subscribe("interop.end", end)

    first = RecipeStep()
    first.start(Recipe(RECIPE), environment=ENVIRONMENT)
    client.publish(first.outputs).result(5)

    (arrived,) = theirs_inbox.wait_for_count(1)
    message = json.loads(arrived.body)
    assert arrived.headers["workflows-recipe"] is True
    wrapper = RecipeWrapper(message=message, transport=Bridge(client))
    assert wrapper.recipe_pointer == 2
    assert wrapper.recipe_path == [1]
    assert wrapper.environment == ENVIRONMENT
    assert wrapper.payload == {"frame": 2}
    assert wrapper.recipe == workflows.recipe.Recipe(RECIPE)
    wrapper.send({"frame": wrapper.payload["frame"] + 1})

    (final,) = end.wait_for_count(1)
    body = json.loads(final.body)
    assert body["recipe-pointer"] == 3
    assert body["recipe-path"] == [1, 2]
    assert body["environment"] == ENVIRONMENT
    assert body["payload"] == {"frame": 3}
    assert Recipe(body["recipe"]) == Recipe(RECIPE)
    assert body["recipe"]["2"]["custom-key"] == {"kept": True}


def test_a_recipe_started_by_workflows_is_handled_by_our_service(client, collector, start_service):
    start_service(Doubler())
    theirs_inbox = collector(ack_with=client)
    client.subscribe("interop.theirs", theirs_inbox)
    starter = RecipeWrapper(recipe=RECIPE, transport=Bridge(client), environment=ENVIRONMENT)
    starter.start()
    (arrived,) = theirs_inbox.wait_for_count(1)
    body = json.loads(arrived.body)
    assert body["payload"] == {"frame": 2}
    assert (body["recipe-pointer"], body["recipe-path"]) == (2, [1])
    assert body["environment"] == ENVIRONMENT
