"""zocalo cancel: one broadcast per recipe ID on the zocalo.cancel topic, kept by the broker."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from zocalo.cli.main import cli
from zocalo.recipe.cancel import CANCEL_TOPIC, CANCEL_WINDOW, cancelled_recipe, read_cancellation
from zocalo.transport import create_transport


def test_each_recipe_id_is_broadcast(sqlite_broker, collector):
    with create_transport(sqlite_broker) as listener:
        heard = collector()
        listener.subscribe_broadcast(CANCEL_TOPIC, heard)
        before = time.time()
        result = CliRunner().invoke(cli, ["cancel", "recipe-1", "recipe-2", "-t", sqlite_broker])
        assert result.exit_code == 0, result.output
        sent = [json.loads(line.removeprefix("sent ")) for line in result.output.splitlines()]
        assert [message["cancel"] for message in sent] == ["recipe-1", "recipe-2"]
        assert all(before <= message["at"] <= time.time() for message in sent)
        bodies = heard.wait_for_count(2)
        assert [cancelled_recipe(d.body) for d in bodies] == ["recipe-1", "recipe-2"]


def test_the_broker_keeps_the_cancellation_for_a_service_that_starts_later(
    sqlite_broker, collector
):
    result = CliRunner().invoke(cli, ["cancel", "recipe-1", "-t", sqlite_broker])
    assert result.exit_code == 0, result.output
    with create_transport(sqlite_broker) as later:
        heard = collector()
        later.subscribe_broadcast(CANCEL_TOPIC, heard, replay=CANCEL_WINDOW)
        [delivery] = heard.wait_for_count(1)
        assert cancelled_recipe(delivery.body) == "recipe-1"


@pytest.mark.stomp
def test_on_a_broker_that_keeps_no_broadcasts_it_says_who_hears_it(activemq, collector):
    url = activemq.url(prefix="cancel")
    with create_transport(url) as listener:
        heard = collector()
        listener.subscribe_broadcast(CANCEL_TOPIC, heard)
        result = CliRunner().invoke(cli, ["cancel", "recipe-1", "-t", url])
        assert result.exit_code == 0, result.output
        assert "only the services running now hear the cancellation" in result.output
        assert cancelled_recipe(heard.wait_for_count(1)[0].body) == "recipe-1"


def test_a_recipe_id_is_required():
    result = CliRunner().invoke(cli, ["cancel"])
    assert result.exit_code == 2
    assert "Missing argument 'RECIPE_ID...'" in result.output


def test_anything_else_on_the_topic_names_no_recipe():
    assert cancelled_recipe(b"not json") is None
    assert cancelled_recipe(json.dumps({"cancel": 7})) is None
    assert cancelled_recipe(json.dumps(["cancel"])) is None
    assert cancelled_recipe(json.dumps({"replayed": "a runner's marker"})) is None


def test_a_cancellation_without_a_sensible_time_counts_from_when_it_was_heard():
    assert read_cancellation(json.dumps({"cancel": "r", "at": 100.5}), heard_at=200) == ("r", 100.5)
    for at in (None, "yesterday", True, float("inf"), float("nan"), -(10**400), 300):
        body = json.dumps({"cancel": "r", "at": at})  # (300: from the future)
        assert read_cancellation(body, heard_at=200) == ("r", 200.0), at
    assert read_cancellation(json.dumps({"cancel": "r"}), heard_at=200) == ("r", 200.0)
