"""zocalo cancel: one broadcast per recipe ID on the zocalo.cancel topic."""

from __future__ import annotations

import json

from click.testing import CliRunner

from zocalo.cli.main import cli
from zocalo.recipe.cancel import CANCEL_TOPIC, cancelled_recipe
from zocalo.transport import create_transport


def test_each_recipe_id_is_broadcast(sqlite_broker, collector):
    with create_transport(sqlite_broker) as listener:
        heard = collector()
        listener.subscribe_broadcast(CANCEL_TOPIC, heard)
        result = CliRunner().invoke(cli, ["cancel", "recipe-1", "recipe-2", "-t", sqlite_broker])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == [
            'sent {"cancel": "recipe-1"}',
            'sent {"cancel": "recipe-2"}',
        ]
        bodies = heard.wait_for_count(2)
        assert [cancelled_recipe(d.body) for d in bodies] == ["recipe-1", "recipe-2"]


def test_a_recipe_id_is_required():
    result = CliRunner().invoke(cli, ["cancel"])
    assert result.exit_code == 2
    assert "Missing argument 'RECIPE_ID...'" in result.output


def test_anything_else_on_the_topic_names_no_recipe():
    assert cancelled_recipe(b"not json") is None
    assert cancelled_recipe(json.dumps({"cancel": 7})) is None
    assert cancelled_recipe(json.dumps(["cancel"])) is None
