"""URL options: every transport refuses unknown options and invalid values, in one line
that never shows the password; valid values arrive typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from zocalo.errors import InvalidURL
from zocalo.transport import create_transport
from zocalo.transport.registry import redact_url

SECRET = "Pw-s3cret"


def amqp(query: str = "", netloc: str = "127.0.0.1:5672") -> str:
    return f"amqp://guest:{SECRET}@{netloc}/zocalo-test?{query}"


def refusal(url: str, **keywords: object) -> str:
    """The one-line InvalidURL ``url`` gets at construction (no broker is contacted)."""
    with pytest.raises(InvalidURL) as caught:
        create_transport(url, **keywords)
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message, message
    return message


@pytest.mark.parametrize(
    "url",
    [
        "memory://options?confrim_delay=1",
        "sqlite:///{tmp}/broker.db?visibility_timeuot=5",
        amqp("hearbeat=10"),
        f"stomp://zocalo:{SECRET}@127.0.0.1:61613?prefx=zocalo",
    ],
    ids=["memory", "sqlite", "rabbitmq", "stomp"],
)
def test_every_transport_refuses_an_unknown_option(url: str, tmp_path: Path) -> None:
    message = refusal(url.format(tmp=tmp_path))
    assert "unknown option" in message
    assert "known:" in message and "delivery_limit" in message, "the known options are listed"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://options?confirm_delay=-1", "confirm_delay='-1' must be at least 0"),
        ("memory://options?delivery_limit=0", "delivery_limit='0' must be at least 1"),
        ("memory://options?delivery_limit=many", "delivery_limit='many' is not a whole number"),
        ("memory://options?delivery_limit=2&delivery_limit=3", "given twice"),
        # A negative lease made two consumers process one message six times.
        ("sqlite:///{tmp}/b.db?visibility_timeout=-1", "visibility_timeout='-1' must be at"),
        ("sqlite:///{tmp}/b.db?visibility_timeout=0", "visibility_timeout='0' must be at"),
        ("sqlite:///{tmp}/b.db?reap_interval=-0.5", "reap_interval='-0.5' must be at least"),
        ("sqlite:///{tmp}/b.db?reap_interval=0", "reap_interval='0' must be at least"),
        ("sqlite:///{tmp}/b.db?delivery_limit=1.5", "delivery_limit='1.5' is not a whole"),
        ("sqlite:///{tmp}/b.db?synchronous=sometimes", "is not one of off, normal, full"),
        ("sqlite:///{tmp}/b.db?visibility_timeout=nan", "must be a finite number"),
        (amqp("heartbeat=abc"), "heartbeat='abc' is not a whole number"),
        (amqp("heartbeat=-1"), "heartbeat='-1' must be at least 0"),
        (amqp("heartbeat=70000"), "heartbeat='70000' must be at most 65535"),
        (amqp("timeout=0"), "timeout='0' must be greater than 0"),
        (amqp("timeout=inf"), "must be a finite number"),
        (amqp("delivery_limit=0"), "delivery_limit='0' must be at least 1"),
        (amqp("hosts=h:x"), "'h:x' is not host[:port]"),
        (amqp("hosts=h1,[::1"), "'[::1' is not host[:port]"),
        (amqp(netloc="127.0.0.1:abc"), "is malformed"),
        (amqp(netloc="127.0.0.1:99999"), "is malformed"),
        (amqp(netloc="[::1"), "is malformed: Invalid IPv6 URL"),
        (f"stomp://u:{SECRET}@h?heartbeat=-1", "heartbeat='-1' must be at least 0"),
        (f"stomp://u:{SECRET}@h?delivery_limit=0", "delivery_limit='0' must be at least 1"),
        (f"stomp://u:{SECRET}@h?hosts=h:x", "'h:x' is not host[:port]"),
        (f"stomp://u:{SECRET}@h/vhost", "a STOMP URL has no path"),
    ],
)
def test_invalid_values_are_refused_in_one_line(url: str, expected: str, tmp_path: Path) -> None:
    assert expected in refusal(url.format(tmp=tmp_path))


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    url = f"amqps://guest:{SECRET}@127.0.0.1:5671/?cafile={missing}"
    message = refusal(url)
    assert f"cafile='{missing}'" in message and "does not exist" in message
    not_a_certificate = tmp_path / "empty.pem"
    not_a_certificate.write_text("")
    message = refusal(f"amqps://guest:{SECRET}@127.0.0.1:5671/?cafile={not_a_certificate}")
    assert f"cafile={not_a_certificate}" in message and "TLS" in message


def test_valid_options_arrive_typed(tmp_path: Path) -> None:
    sqlite = create_transport(
        f"sqlite:///{tmp_path}/b.db?visibility_timeout=2.5&reap_interval=0.05&synchronous=FULL"
        "&delivery_limit=7"
    )
    assert (sqlite.visibility_timeout, sqlite.reap_interval, sqlite.synchronous) == (
        2.5,
        0.05,
        "full",
    )
    assert sqlite.delivery_limit == 7
    memory = create_transport("memory://options-typed?delivery_limit=2&confirm_delay=0.25")
    assert memory.delivery_limit == 2
    assert memory.broker.confirm_delay == 0.25
    rabbit = create_transport(amqp("heartbeat=5&timeout=2.5&hosts=h2:5673,[::1]:5674,h3"))
    assert [(node.host, node.port) for node in rabbit.nodes] == [
        ("127.0.0.1", 5672),
        ("h2", 5673),
        ("::1", 5674),
        ("h3", 5672),
    ]
    assert (rabbit.parameters.heartbeat, rabbit.parameters.socket_timeout) == (5, 2.5)


def test_an_empty_value_means_the_default(tmp_path: Path) -> None:
    assert (
        create_transport(f"sqlite:///{tmp_path}/b.db?visibility_timeout=").visibility_timeout == 60
    )


@pytest.mark.parametrize(
    "url",
    ["memory://options-keywords", "sqlite:///{tmp}/b.db", amqp()],
    ids=["memory", "sqlite", "rabbitmq"],
)
def test_keyword_options_win_over_the_url_and_are_checked_too(url: str, tmp_path: Path) -> None:
    url = url.format(tmp=tmp_path)
    separator = "&" if "?" in url else "?"
    assert (
        create_transport(f"{url}{separator}delivery_limit=2", delivery_limit=4).delivery_limit == 4
    )
    with pytest.raises(ValueError, match="delivery_limit=0 must be at least 1"):
        create_transport(url, delivery_limit=0)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://user:secret@host/vhost", "amqp://user:***@host/vhost"),
        ("amqp://user:se@cr:et@host:5672/?hosts=a", "amqp://user:***@host:5672/?hosts=a"),
        ("amqp://user:p%40ss@host/", "amqp://user:***@host/"),
        ("amqp://user:se?cret@host/vh", "amqp://user:***@host/vh"),
        ("amqp://user:se#cret@host/vh?heartbeat=1", "amqp://user:***@host/vh?heartbeat=1"),
        ("sqlite:///data/broker.db?x=a@b", "sqlite:///data/broker.db?x=a@b"),
        ("amqp://user:secret@host:abc/", "amqp://user:***@host:abc/"),
        ("amqp://user:secret@[::1/", "amqp://user:***@[::1/"),
        ("amqp:/user:secret@host", "amqp:/user:***@host"),
        ("user:secret@host", "user:***@host"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("sqlite:///data/a:b@c/broker.db", "sqlite:///data/a:b@c/broker.db"),
        ("amqp://host/?name=a@b:c", "amqp://host/?name=a@b:c"),
    ],
)
def test_redact_url_hides_the_password_even_in_malformed_urls(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
