"""The STOMP transport's URL, destinations and header encoding (no broker needed)."""

from __future__ import annotations

import json

import pytest

from zocalo.config.plugins import StompConfig
from zocalo.errors import InvalidURL, UnsupportedFeature
from zocalo.transport import Outgoing, create_transport
from zocalo.transport.stomp.headers import (
    TYPED_HEADER,
    Uncarriable,
    escape,
    from_stomp,
    received,
    to_stomp,
)
from zocalo.transport.stomp.topology import Destinations, routing_headers
from zocalo.transport.stomp.url import endpoint


def test_the_site_configurations_stomp_section_is_a_url_we_read() -> None:
    section = StompConfig(
        plugin="stomp", host="amq", port=61613, username="u s", password="p@ss:w", prefix="zoc"
    )
    place, options = endpoint(section.url())
    assert place.nodes == (("amq", 61613),)
    assert (place.login, place.passcode, place.prefix) == ("u s", "p@ss:w", "zoc")
    assert "p@ss" not in place.safe_url and "***" in place.safe_url
    assert options["delivery_limit"] == 5


def test_no_credentials_is_anonymous_and_failover_nodes_come_after_the_first() -> None:
    place, _ = endpoint("stomp://broker?hosts=b2:61614,b3&prefix=zocalo.&heartbeat=0")
    assert (place.login, place.passcode) == (None, None)
    assert place.nodes == (("broker", 61613), ("b2", 61614), ("b3", 61613))
    assert place.prefix == "zocalo"  # python-workflows appends the dot itself
    assert place.heartbeat == 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stomp://h/vhost", "has no path"),
        ("stomp://h?prefx=a", "unknown option 'prefx'"),
        ("stomp://h?hosts=:1", "is not host[:port]"),
        ("stomp://h?timeout=0", "must be greater than 0"),
        ("stomp://u:secret@h:99999", "malformed"),
    ],
)
def test_a_url_that_cannot_work_is_refused_in_one_line(url: str, expected: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        create_transport(url)
    assert expected in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_destinations_are_python_workflows_and_dead_letters_activemqs() -> None:
    names = Destinations("zocalo")
    assert names.queue("per_image") == "/queue/zocalo.per_image"
    assert names.topic("transient.status") == "/topic/zocalo.transient.status"
    assert names.queue("dlq.per_image") == "/queue/DLQ.zocalo.per_image"
    assert names.queue_name("/queue/DLQ.zocalo.per_image") == "dlq.per_image"
    assert names.queue_name("/queue/zocalo.per_image") == "per_image"
    assert names.queue_name("/queue/other.per_image") is None
    assert Destinations("").queue("q") == "/queue/q"
    for wildcard in ("a.>", "a.*", "a,b", " a"):
        with pytest.raises(UnsupportedFeature):
            names.queue(wildcard)


def test_routing_headers_carry_delay_expiry_priority_and_persistence() -> None:
    message = Outgoing("q", b"", delay=1.5, priority=7, expiration=2.0)
    assert routing_headers(message, now=1000.0) == {
        "persistent": "true",
        "AMQ_SCHEDULED_DELAY": "1500",
        "expires": "1002000",
        "priority": "7",
    }
    assert routing_headers(Outgoing("q", b"")) == {"persistent": "true", "priority": "0"}
    assert routing_headers(Outgoing("t", b"", broadcast=True, delay=0.2)) == {
        "AMQ_SCHEDULED_DELAY": "200"
    }
    for priority in (-1, 10, 2.5):
        with pytest.raises(UnsupportedFeature, match="0 to 9"):
            routing_headers(Outgoing("q", b"", priority=priority))  # type: ignore[arg-type]


def test_header_values_round_trip_strings_as_text_and_others_as_json() -> None:
    headers = {
        "workflows-recipe": True,
        "text": "Zócalo ✓",
        "number": 3,
        "nested": {"a": [1, None, 2.5]},
        "nul": "a\x00b",
    }
    frame = to_stomp(headers)
    assert frame["text"] == "Zócalo ✓" and frame["workflows-recipe"] == "true"
    assert set(json.loads(frame[TYPED_HEADER])) == {"workflows-recipe", "number", "nested", "nul"}
    arrived = {**frame, "destination": "/queue/x", "message-id": "ID:1", "expires": "0"}
    assert from_stomp(arrived) == headers
    # A foreign sender's header is kept as its text, even if it looks like JSON.
    assert from_stomp({"step": "3", "flag": "True"}) == {"step": "3", "flag": "True"}
    assert escape("a:b\\c\nd") == "a\\cb\\\\c\\nd"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"priority": "9"}, "STOMP or ActiveMQ header"),
        ({"JMSType": "x"}, "STOMP or ActiveMQ header"),
        ({"": "x"}, "not text"),
        ({"value": object()}, "cannot travel as JSON"),
        ({"value": float("nan")}, "cannot travel as JSON"),
    ],
)
def test_headers_stomp_cannot_carry_are_refused_naming_them(headers: dict, why: str) -> None:
    with pytest.raises(Uncarriable, match=why):
        to_stomp(headers)


def test_a_dead_letter_activemq_made_is_described_in_our_headers() -> None:
    frame = {
        "original-destination": "/queue/zocalo.per_image",
        "dlqDeliveryFailureCause": "java.lang.Throwable: Delivery[2] exceeds redelivery policy",
        "k": "v",
    }
    headers = received(frame, Destinations("zocalo").queue_name)
    assert headers["k"] == "v"
    assert headers["zocalo-dlq-queue"] == "per_image"
    assert "exceeds redelivery policy (dead-lettered by ActiveMQ)" in headers["zocalo-dlq-reason"]
    assert headers["zocalo-dlq-history"][-1]["queue"] == "per_image"
