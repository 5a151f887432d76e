"""The rules of a processing request, read from the library as a Dispatcher would."""

from __future__ import annotations

import json
import threading
import uuid
from unittest.mock import ANY

import pytest

import zocalo
from zocalo.errors import ZocaloError
from zocalo.recipe import Recipe
from zocalo.submission import (
    DISPATCHER_QUEUE,
    InvalidRequest,
    MissingId,
    MissingRecipe,
    Submission,
    direct_start,
    processing_request,
    request_parameters,
    start_for_replies,
    write_drop_file,
)
from zocalo.transport.memory import MemoryTransport

RECIPE = Recipe({"1": {"queue": "submit.first"}, "start": [[1, {"dc": "{ispyb_dcid}"}]]})


def test_a_data_collection_request_carries_its_id_and_keeps_the_parameters() -> None:
    given = {"beamline": "i03"}
    assert request_parameters(given, has_recipe=True, dcid=1234) == {
        "beamline": "i03",
        "ispyb_dcid": 1234,
    }
    assert given == {"beamline": "i03"}, "the caller's parameters are not changed"


def test_a_reprocessing_needs_no_recipe_and_carries_ispyb_process() -> None:
    assert request_parameters({}, has_recipe=False, dcid=55, reprocessing=True) == {
        "ispyb_process": 55
    }


def test_autoprocscalingid_goes_in_with_or_without_a_data_collection() -> None:
    assert request_parameters({}, has_recipe=False, dcid_required=False, autoprocscalingid=7) == {
        "ispyb_autoprocscalingid": 7
    }
    with_dc = request_parameters({}, has_recipe=True, dcid=1, autoprocscalingid=7)
    assert with_dc == {"ispyb_dcid": 1, "ispyb_autoprocscalingid": 7}


def test_without_a_data_collection_the_id_is_ignored() -> None:
    assert request_parameters({}, has_recipe=False, dcid=9, dcid_required=False) == {}


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"has_recipe": False}, MissingRecipe, "a request names no recipe"),
        ({"has_recipe": False, "dcid": 5}, MissingRecipe, "a request names no recipe"),
        ({"has_recipe": True}, MissingId, r"data collection id \(DCID > 0\) is required"),
        ({"has_recipe": True, "dcid": 0}, MissingId, "data collection id"),
        ({"has_recipe": True, "dcid": -3}, MissingId, "data collection id"),
        ({"has_recipe": True, "dcid": True}, MissingId, "data collection id"),
        ({"has_recipe": False, "reprocessing": True}, MissingId, "reprocessing id"),
    ],
)
def test_broken_rules_are_invalid_requests_in_one_line(arguments, error, message) -> None:
    with pytest.raises(error, match=message) as caught:
        request_parameters({}, **arguments)
    assert isinstance(caught.value, InvalidRequest) and isinstance(caught.value, ZocaloError)
    assert "\n" not in str(caught.value)


def test_processing_request_is_what_the_dispatcher_reads() -> None:
    submission = processing_request(["per-image"], {"a": "b"}, RECIPE, dcid=1234)
    assert submission.queue == DISPATCHER_QUEUE
    (message,) = submission.outputs
    body = json.loads(message.body)
    assert body["recipes"] == ["per-image"]
    guid = body["parameters"].pop("guid")
    assert body["parameters"] == {"a": "b", "ispyb_dcid": 1234}
    assert body["custom_recipe"]["1"]["queue"] == "submit.first"
    with pytest.raises(MissingRecipe):
        processing_request([], {}, None, dcid=1234)
    assert processing_request([], {}, RECIPE, dcid=1).body["parameters"]["ispyb_dcid"] == 1
    assert submission.recipe_id == guid == str(uuid.UUID(guid)), "a fresh uuid4: the recipe ID"


def test_a_request_keeps_the_guid_it_is_given_as_its_recipe_id() -> None:
    submission = processing_request(["x"], {"guid": "mine"}, dcid=5)
    assert submission.recipe_id == "mine"
    assert json.loads(submission.outputs[0].body)["parameters"]["guid"] == "mine"


def test_a_drop_file_is_what_python_zocalos_pickup_reads(tmp_path) -> None:
    submission = processing_request(["x"], {"guid": "stored"}, dcid=5)
    path = write_drop_file(tmp_path / "fallback", submission)
    assert path.parent == tmp_path / "fallback" and str(uuid.UUID(path.name)) == path.name
    expected = {"headers": submission.headers, "message": submission.body}
    assert path.read_text() == json.dumps(expected, indent=2) + "\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no partial file left"
    assert path.stat().st_mode & 0o777 == 0o600, "a stored request is private"
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_direct_start_offers_the_dcid_unless_a_parameter_names_one() -> None:
    _, offered = direct_start(RECIPE, {}, dcid=42)
    assert json.loads(offered.body)["payload"] == {"dc": "42"}
    _, kept = direct_start(RECIPE, {"ispyb_dcid": "7"}, dcid=42)
    assert json.loads(kept.body)["payload"] == {"dc": "7"}


def test_a_job_whose_caller_waits_names_its_reply_queue_where_the_recipe_finds_it() -> None:
    request = processing_request(["x"], {"guid": "r"}, dcid=5, reply_to="zocalo.reply.q")
    assert request.reply_to == "zocalo.reply.q"
    assert json.loads(request.outputs[0].body)["parameters"]["zocalo_reply_to"] == "zocalo.reply.q"
    _, direct = direct_start(RECIPE, {}, {"beamline": "i03"}, dcid=1, reply_to="zocalo.reply.q")
    assert direct.reply_to == "zocalo.reply.q"
    environment = json.loads(direct.body)["environment"]
    assert environment == {"beamline": "i03", "zocalo_reply_to": "zocalo.reply.q", "ID": ANY}
    assert processing_request(["x"], {}, dcid=5).reply_to is None


def test_a_waited_for_job_is_built_naming_the_address_its_reply_queue_got() -> None:
    """The broker may name the queue (ActiveMQ does): the job is built once it has."""

    class Renaming(MemoryTransport):
        def declare_reply_queue(self, queue: str) -> str:
            super().declare_reply_queue(queue)
            return f"{queue}.as-the-broker-names-it"

    built: list[str] = []

    def build(reply_to: str) -> Submission:
        built.append(reply_to)
        return processing_request(["x"], {}, dcid=5, reply_to=reply_to)

    with Renaming(f"memory://{uuid.uuid4().hex}") as transport:
        submission, replies = start_for_replies(build, transport)
        assert built == [replies.reply_to] == [f"{replies.queue}.as-the-broker-names-it"]
        sent = json.loads(submission.outputs[0].body)["parameters"]["zocalo_reply_to"]
        assert sent == replies.reply_to
        replies.close()


@pytest.mark.parametrize("wrong", [{"results": 0}, {"timeout": 0}])
def test_submit_refusing_its_arguments_leaves_no_connection_open(tmp_path, wrong) -> None:
    """``zocalo.submit(url, ...)`` opens a connection of its own: a wait it refuses
    (no replies, no time) must close it, not leave its threads running."""
    before = set(threading.enumerate())
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    with pytest.raises(ValueError):
        zocalo.submit(url, recipe=RECIPE, direct=True, **wrong)
    left = [thread for thread in set(threading.enumerate()) - before if thread.is_alive()]
    for thread in left:
        thread.join(10)  # (a closed connection's threads end; give them the time)
    assert [thread.name for thread in left if thread.is_alive()] == []
