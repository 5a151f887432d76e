"""Where a dead letter goes back to, with which headers, and restarting it at another step:
worked out from the file alone, before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zocalo.dlq.errors import CannotReinject, UnreadableFile
from zocalo.dlq.files import DeadLetterFile
from zocalo.dlq.reinject import prepare, prepare_files, reinjected_headers
from zocalo.recipe import Recipe, wire
from zocalo.service.middleware.base import ATTEMPT_HEADER
from zocalo.service.middleware.retries import RETRY_REASON_HEADER

RECIPE = Recipe(
    {
        "1": {"queue": "find", "output": 2},
        "2": {"queue": "summarise", "output": 3},
        "3": {"queue": "record", "topic": "news"},
        "start": [[1, {}]],
    }
)


def letter(header: dict, message: object = None, path: str = "f") -> DeadLetterFile:
    return DeadLetterFile(Path(path), header, {"m": 1} if message is None else message)


def routes(header: dict, **options) -> list[tuple[str, bool]]:
    return [(m.destination, m.broadcast) for m in prepare(letter(header), **options).messages]


def test_headers_lose_the_transport_fields_and_dead_letter_marks_and_say_reinjected():
    header = {
        "message-id": "ID:1",
        "routing_key": "q",
        "redelivered": True,
        "exchange": "",
        "consumer_tag": "ctag",
        "delivery_mode": 2,
        "destination": "/queue/x",
        "timestamp": "1633102156582",
        "x-death": [{"queue": "q"}],
        "x-first-death-queue": "q",
        "zocalo-dlq-reason": "ValueError: no",
        "zocalo-dlq-queue": "q",
        ATTEMPT_HEADER: 2,
        RETRY_REASON_HEADER: "ValueError: no",
        "zocalo-dlq-history": ["ValueError: no", {"queue": "q", "time": 1.5}],
        "workflows-recipe": True,
        "mine": {"nested": [1, 2.5]},
    }
    assert reinjected_headers(header) == {
        "zocalo-dlq-history": ["ValueError: no", {"queue": "q", "time": 1.5}],
        "workflows-recipe": True,
        "mine": {"nested": [1, 2.5]},
        "dlq-reinjected": "True",
    }


def test_a_broker_dead_letter_goes_back_through_the_exchange_it_came_through():
    death = {"queue": "images", "exchange": "", "routing-keys": ["images"], "reason": "rejected"}
    # The newest x-death entry (RabbitMQ prepends): the exchange that took it to "images".
    older = {"queue": "elsewhere", "exchange": "old", "routing-keys": ["o"]}
    named = {"x-death": [{**death, "exchange": "routed", "routing-keys": ["k", "cc"]}, older]}
    (message,) = prepare(letter(named)).messages
    assert (message.exchange, message.destination, message.broadcast) == ("routed", "k", False)
    assert message.headers["CC"] == ["cc"], "the other routing keys, as CC"
    assert message.describe() == "exchange 'routed' with routing key 'k'"
    # The default exchange, or one that only delayed it: the queue it died in.
    for exchange in ("", "delayed", "zocalo.delay.delivery"):
        (message,) = prepare(letter({"x-death": [{**death, "exchange": exchange}]})).messages
        assert (message.exchange, message.destination) == (None, "images")
        assert "CC" not in message.headers
    # No routing keys to go by, or a broker without exchanges: the queue it died in.
    keyless = {"x-death": [{"queue": "images", "exchange": "routed"}]}
    assert routes(keyless) == [("images", False)]
    assert routes(named, through_exchanges=False) == [("images", False)]


def test_our_dead_letters_and_activemqs_go_back_to_where_they_came_from():
    assert routes({"zocalo-dlq-queue": "spots"}) == [("spots", False)]
    assert routes({"destination": "/queue/zocalo.spots"}) == [("zocalo.spots", False)]
    stomp = {"original-destination": "/topic/news", "destination": "/queue/DLQ.news"}
    assert routes(stomp) == [("news", True)]


def test_a_destination_overrides_where_and_understands_stomp_names():
    header = {"zocalo-dlq-queue": "spots"}
    assert routes(header, destination="elsewhere") == [("elsewhere", False)]
    assert routes(header, destination="/topic/news") == [("news", True)]
    assert routes({}, destination="/queue/q") == [("q", False)]


def test_a_file_that_says_nothing_of_where_it_came_from_is_refused_naming_it():
    with pytest.raises(CannotReinject, match=r"^lost: cannot tell where it came from"):
        prepare(letter({"x-death": [{}]}, path="lost"))


def recipe_letter(pointer: int, path: list[int], payload: object = "p") -> DeadLetterFile:
    body = wire.encode(RECIPE, pointer, path, {"ID": "job-1"}, payload)
    return DeadLetterFile(
        Path("letter"), {"workflows-recipe": True, "zocalo-dlq-queue": "record"}, json.loads(body)
    )


def test_step_restarts_the_recipe_there_with_its_path_cut_back():
    reinjection = prepare(recipe_letter(3, [1, 2]), step=1)
    (message,) = reinjection.messages
    assert (message.destination, message.broadcast) == ("find", False)
    decoded = wire.decode(message.body, message.headers, "test")
    assert (decoded.pointer, decoded.path, decoded.payload) == (1, [], "p")
    assert decoded.environment == {"ID": "job-1"} and decoded.recipe == RECIPE
    two = prepare(recipe_letter(3, [1, 2]), step=2).messages[0]
    assert wire.decode(two.body, two.headers, "test").path == [1]


def test_step_goes_to_every_destination_of_the_step_unless_told_otherwise():
    both = prepare(recipe_letter(1, []), step=3).messages
    assert [(m.destination, m.broadcast) for m in both] == [("record", False), ("news", True)]
    assert all(wire.decode(m.body, m.headers, "t").path == [] for m in both)
    moved = prepare(recipe_letter(1, []), step=3, destination="other").messages
    assert [(m.destination, wire.decode(m.body, m.headers, "t").pointer) for m in moved] == [
        ("other", 3)
    ]


def test_step_is_refused_for_a_plain_message_and_a_step_the_recipe_lacks():
    with pytest.raises(CannotReinject, match="not a recipe message, so it has no step 1"):
        prepare(letter({"zocalo-dlq-queue": "q"}), step=1)
    with pytest.raises(CannotReinject, match=r"has no step 9 \(steps: \[1, 2, 3\]\)"):
        prepare(recipe_letter(1, []), step=9)
    broken = recipe_letter(1, [])
    broken.message["recipe"] = {"1": {"queue": "q"}, "start": "nonsense"}
    with pytest.raises(CannotReinject, match="invalid recipe"):
        prepare(broken, step=1)


def test_every_file_is_checked_before_anything_is_sent(tmp_path):
    good = tmp_path / "good"
    good.write_text(json.dumps({"header": {"zocalo-dlq-queue": "q"}, "message": 1}))
    bad = tmp_path / "bad"
    bad.write_text("{")
    assert [r.messages[0].destination for r in prepare_files([good, good])] == ["q", "q"]
    with pytest.raises(UnreadableFile, match=f"^{bad}: "):
        prepare_files([good, bad])
