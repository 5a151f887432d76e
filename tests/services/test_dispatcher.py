"""The Dispatcher: requests in, recipes started; bad requests dead-lettered, one line each.

On every transport, with a Dispatcher on a thread of the test and the test
plugins (a filter, a readiness check) installed from ``plugins/``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import workflows.recipe

from zocalo.recipe import Recipe, wire
from zocalo.recipe.step import RecipeStep
from zocalo.services.dispatcher import RECHECK_DELAY, Dispatcher, PluginError
from zocalo.submission import DISPATCHER_QUEUE
from zocalo.transport import Transport
from zocalo.transport.base import DLQ_REASON_HEADER

SUBMITTER = {"zocalo.go.user": "tester", "zocalo.go.host": "beamline-pc"}


def submit(client: Transport, request: Any) -> None:
    client.send(DISPATCHER_QUEUE, json.dumps(request), headers=SUBMITTER)


def one_step(queue: str, **parameters: Any) -> dict[str, Any]:
    """A request for the library's one-step recipe, its step on ``queue``."""
    return {"recipes": ["one-step"], "parameters": {"first_queue": queue, **parameters}}


def test_a_request_starts_its_recipe_after_the_filter_as_python_workflows_reads_it(
    dispatcher, client, collector, queue
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    submit(client, one_step(queue, ispyb_dcid=1234, guid="a-recipe-id"))
    (delivery,) = started.wait_for_count(1)
    body = json.loads(delivery.body)
    assert delivery.headers["workflows-recipe"] is True
    assert body["environment"] == {"ID": "a-recipe-id"}
    assert (body["recipe-pointer"], body["recipe-path"]) == (1, [])
    assert body["payload"] == {"dc": "1234"}
    assert body["recipe"]["1"]["parameters"] == {"found": "sample-of-1234"}, "the filter ran"
    theirs = workflows.recipe.RecipeWrapper(message=body, transport=None)
    assert theirs.recipe_step["queue"] == queue
    assert theirs.environment["ID"] == "a-recipe-id"


def test_without_a_guid_the_recipe_id_is_a_fresh_uuid(dispatcher, client, collector, queue):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    submit(client, one_step(queue))
    submit(client, one_step(queue))
    ids = [json.loads(d.body)["environment"]["ID"] for d in started.wait_for_count(2)]
    assert len(set(ids)) == 2
    assert all(str(uuid.UUID(recipe_id)) == recipe_id for recipe_id in ids)


def test_the_custom_recipe_comes_first_then_the_named_ones_in_order(
    dispatcher, client, collector, queue
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    custom = {"1": {"queue": queue, "output": 2}, "2": {"queue": queue}, "start": [[1, "c"]]}
    request = one_step(queue, ispyb_dcid=1)
    request["custom_recipe"] = custom
    request["recipes"] = ["one-step", "one-step"]
    submit(client, request)
    deliveries = started.wait_for_count(3)
    recipe = json.loads(deliveries[0].body)["recipe"]
    assert recipe["start"] == [[1, "c"], [3, {"dc": "1"}], [4, {"dc": "1"}]]
    assert recipe["1"]["output"] == [2] and recipe["3"]["queue"] == queue
    assert sorted(json.loads(d.body)["recipe-pointer"] for d in deliveries) == [1, 3, 4]


def test_a_filter_may_add_recipes_before_the_library_is_read(dispatcher, client, collector, queue):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    submit(client, {"recipes": [], "parameters": {"first_queue": queue, "add_recipe": "one-step"}})
    (delivery,) = started.wait_for_count(1)
    assert json.loads(delivery.body)["recipe"]["1"]["queue"] == queue


def test_a_request_not_ready_is_checked_again_later_with_the_same_recipe_id(
    dispatcher, client, collector, queue
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    request = {
        "custom_recipe": {
            "1": {"queue": queue, "parameters": {"checks": "{readiness_checks}"}},
            "start": [[1, {}]],
        },
        "parameters": {"ready_after": 2, "guid": "patient"},
    }
    sent = time.monotonic()
    submit(client, request)
    (delivery,) = started.wait_for_count(1, timeout=RECHECK_DELAY + 10)
    assert started.arrival(delivery.body) - sent >= RECHECK_DELAY * 0.9
    body = json.loads(delivery.body)
    assert body["recipe"]["1"]["parameters"] == {"checks": "2"}
    assert body["environment"] == {"ID": "patient"}


def test_a_request_still_not_ready_when_it_expires_goes_to_its_error_queue(
    dispatcher, client, collector, queue
):
    errors = collector(ack_with=client)
    client.subscribe(f"{queue}.errors", errors)
    request = one_step(
        queue, ready_after=5, dispatcher_timeout=0, dispatcher_error_queue=f"{queue}.errors"
    )
    submit(client, request)
    (delivery,) = errors.wait_for_count(1)
    parameters = json.loads(delivery.body)["parameters"]
    assert parameters["readiness_checks"] == 1
    assert parameters["guid"] and "dispatcher_expiration" in parameters
    assert {k: delivery.headers[k] for k in SUBMITTER} == SUBMITTER
    assert "workflows-recipe" not in delivery.headers


def test_a_recipe_step_on_processing_recipe_starts_a_sub_recipe(
    dispatcher, client, collector, queue
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    parent = RecipeStep()
    parent.start(
        Recipe({"1": {"queue": DISPATCHER_QUEUE}, "start": [[1, one_step(queue, ispyb_dcid=8)]]}),
        environment={"ID": "parent-recipe"},
    )
    client.publish(parent.outputs).result(10)
    (delivery,) = started.wait_for_count(1)
    body = json.loads(delivery.body)
    assert body["environment"]["ID"] != "parent-recipe"
    assert body["payload"] == {"dc": "8"}


def test_a_requests_reply_queue_goes_into_the_environment_of_its_recipe(
    dispatcher, client, collector, queue
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    submit(client, one_step(queue, guid="waited-for", zocalo_reply_to="zocalo.reply.caller"))
    (delivery,) = started.wait_for_count(1)
    environment = json.loads(delivery.body)["environment"]
    assert environment == {"ID": "waited-for", "zocalo_reply_to": "zocalo.reply.caller"}
    assert RecipeStep(wire.decode(delivery.body, delivery.headers, "started")).reply(1) == 1


@pytest.mark.parametrize(
    ("own", "expected"), [(None, "zocalo.reply.parent"), ("zocalo.reply.own", "zocalo.reply.own")]
)
def test_a_sub_recipe_replies_where_its_parent_does_unless_its_request_says(
    own, expected, dispatcher, client, collector, queue
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    request = one_step(queue, **({"zocalo_reply_to": own} if own else {}))
    parent = RecipeStep()
    parent.start(
        Recipe({"1": {"queue": DISPATCHER_QUEUE}, "start": [[1, request]]}),
        environment={"ID": "parent-recipe", "zocalo_reply_to": "zocalo.reply.parent"},
    )
    client.publish(parent.outputs).result(10)
    (delivery,) = started.wait_for_count(1)
    assert json.loads(delivery.body)["environment"]["zocalo_reply_to"] == expected


def test_the_logbook_holds_each_request_in_python_zocalos_layout(
    dispatcher, client, collector, queue, site
):
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    submit(client, one_step(queue, ispyb_dcid=3, guid="ab12-logged"))
    started.wait_for_count(1)
    entry = site.logbook / time.strftime("%Y-%m") / "ab" / "12-logged"
    titles = [
        "Incoming message header",
        "Incoming message body",
        "Parsed message body",
        "Recipe object",
    ]
    sections = dict(part.split(":\n", 1) for part in entry.read_text().split("\n\n"))
    assert list(sections) == titles
    assert json.loads(sections["Incoming message header"])["zocalo.go.user"] == "tester"
    assert json.loads(sections["Incoming message body"])["parameters"]["guid"] == "ab12-logged"
    parsed = json.loads(sections["Parsed message body"])
    assert parsed["recipes"] == ["one-step"]
    assert parsed["parameters"]["looked_up"] == "sample-of-3", "as the filters left them"
    assert json.loads(sections["Recipe object"])["1"]["parameters"] == {"found": "sample-of-3"}
    assert entry.read_text().endswith("}\n")


BAD_REQUESTS = {
    "unknown recipe": (
        {"recipes": ["no-such-recipe"], "parameters": {}},
        ["no recipe named 'no-such-recipe'"],
    ),
    "invalid recipe": (
        {"recipes": ["broken"], "parameters": {}},
        ["recipe 'broken'", "step 1", "'output'"],
    ),
    "invalid custom recipe": (
        {"custom_recipe": {"1": {"queue": "x"}}, "parameters": {}},
        ["custom_recipe", "start"],
    ),
    "a name outside the library": (
        {"recipes": ["../site"], "parameters": {}},
        ["'../site' leads outside the recipe directory"],
    ),
    "a filter that raises": (
        {"recipes": ["one-step"], "parameters": {"filter_fails": True}},
        ["filter 'look_up' (zocalo_test_plugins:look_up)", "sample database cannot be reached"],
    ),
    "a readiness check that raises": (
        {"recipes": ["one-step"], "parameters": {"readiness_fails": True}},
        ["readiness check 'ready_after_checks'", "not mounted"],
    ),
    "never ready": (
        {"recipes": ["one-step"], "parameters": {"ready_after": 9, "dispatcher_timeout": 0}},
        ["still not ready for processing", "'ready_after_checks'", "dispatcher_error_queue"],
    ),
    "a placeholder that cannot be filled": (
        {"custom_recipe": {"1": {"queue": "{x:>5}"}, "start": [[1, {}]]}, "parameters": {}},
        ["cannot substitute parameters", "{x:>5}", "step 1"],
    ),
    "no recipe at all": ({"parameters": {}}, ["names no recipe"]),
    "a reply queue that is no queue name": (
        {"recipes": ["one-step"], "parameters": {"zocalo_reply_to": ["x"]}},
        ["'zocalo_reply_to' must be a queue name, not ['x']"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_dead_lettered_with_its_reason_and_the_next_one_runs(
    case, dispatcher, client, collector, queue, caplog
):
    request, expected = BAD_REQUESTS[case]
    recipe_id = f"bad-{uuid.uuid4().hex[:8]}"
    request["parameters"]["guid"] = recipe_id
    dead = collector(ack_with=client)
    client.subscribe(f"dlq.{DISPATCHER_QUEUE}", dead)
    started = collector(ack_with=client)
    client.subscribe(queue, started)
    with caplog.at_level(logging.ERROR, logger="zocalo.service.Dispatcher"):
        submit(client, request)
        submit(client, one_step(queue))
        started.wait_for_count(1)
        (letter,) = dead.wait_for_count(1)
    assert json.loads(letter.body) == request
    reason = letter.headers[DLQ_REASON_HEADER]
    for text in [recipe_id, *expected]:
        assert text in reason, reason
    refusals = [r for r in caplog.records if r.name == "zocalo.service.Dispatcher"]
    assert len(refusals) == 1 and recipe_id in refusals[0].getMessage()
    assert "\n" not in refusals[0].getMessage() and refusals[0].exc_info is None


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ([1, 2], "a request must be a JSON object, not [1, 2]"),
        ({"recipes": ["one-step"], "parameters": [1]}, "'parameters' must be a JSON object"),
        ({"recipes": "one-step", "parameters": {}}, "'recipes' must be a list"),
    ],
)
def test_a_request_of_the_wrong_shape_is_dead_lettered(
    request_body, expected, dispatcher, client, collector
):
    dead = collector(ack_with=client)
    client.subscribe(f"dlq.{DISPATCHER_QUEUE}", dead)
    submit(client, request_body)
    (letter,) = dead.wait_for_count(1)
    assert expected in letter.headers[DLQ_REASON_HEADER]


def test_a_plugin_that_cannot_be_loaded_stops_the_dispatcher_from_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    info = tmp_path / "broken_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[zocalo.services.dispatcher.filters]\nispyb = no_such_module:ispyb_filter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"'ispyb' \(no_such_module:ispyb_filter\)"):
        Dispatcher().initializing()
