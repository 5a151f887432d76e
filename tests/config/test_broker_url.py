"""Which broker a tool uses: ``resolve_broker_url``, the one home of that rule.

First that names one wins: the tool's ``-t/--transport``, ``$ZOCALO_TRANSPORT``, the site
configuration, the embedded broker in the user's data directory.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from zocalo.config import SiteConfiguration, load_configuration
from zocalo.errors import ConfigurationError, InvalidURL, UnsupportedFeature
from zocalo.transport import create_transport
from zocalo.transport.registry import embedded_broker_url, resolve_broker_url

SITE = """
version: 1
rmq: {plugin: pika, host: rabbit, port: 5672, username: zoc, password: 'p w', vhost: zocalo}
chosen: {plugin: transport, default: 'memory://config'}
environments:
  live: [rmq]
  chosen: [rmq, chosen]
"""
PIKA = "amqp://zoc:p%20w@rabbit:5672/zocalo"

#: The sources, highest first, and the URL each names here.
SOURCES = {"option": "memory://option", "environment": "memory://env", "site": "memory://config"}


@pytest.fixture
def site(write) -> Path:
    return write("site.yaml", SITE)


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's data directory, here: where the embedded broker lives."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.parametrize(
    "present",
    [
        combination
        for size in range(len(SOURCES) + 1)
        for combination in itertools.combinations(SOURCES, size)
    ],
    ids=lambda present: "+".join(present) or "nothing",
)
def test_the_highest_source_that_names_a_broker_wins(
    present: tuple[str, ...], site: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    option = SOURCES["option"] if "option" in present else None
    if "environment" in present:
        monkeypatch.setenv("ZOCALO_TRANSPORT", SOURCES["environment"])
    config = load_configuration(site, environments=["chosen"]) if "site" in present else None
    winner = next((url for name, url in SOURCES.items() if name in present), None)
    embedded = f"sqlite:///{data_home / 'zocalo' / 'broker.db'}"
    assert resolve_broker_url(option, config) == (winner or embedded)


def test_names_and_urls_from_option_and_environment(site: Path, monkeypatch) -> None:
    live = load_configuration(site, environments=["live"])
    assert resolve_broker_url("sqlite:///tmp/q.db", live) == "sqlite:///tmp/q.db"
    assert resolve_broker_url("PikaTransport", live) == PIKA
    assert resolve_broker_url(None, live) == PIKA, "the site's pika section"
    assert resolve_broker_url(None, load_configuration()) == embedded_broker_url()
    assert resolve_broker_url() == embedded_broker_url()
    with pytest.raises(InvalidURL, match="-t 'rabbit' is neither a URL"):
        resolve_broker_url("rabbit", live, given_as="-t")
    monkeypatch.setenv("ZOCALO_TRANSPORT", "PikaTransport")
    assert resolve_broker_url(None, live) == PIKA
    monkeypatch.setenv("ZOCALO_TRANSPORT", "")
    assert resolve_broker_url(None, live) == PIKA, "an empty variable counts as unset"
    monkeypatch.setenv("ZOCALO_TRANSPORT", "nonsense")
    with pytest.raises(InvalidURL, match=r"\$ZOCALO_TRANSPORT 'nonsense' is neither a URL"):
        resolve_broker_url(None, live)


def test_a_name_without_its_section_and_a_bad_scheme_are_one_line(site: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs a 'stomp' section"):
        resolve_broker_url("StompTransport", load_configuration(site, environments=["live"]))
    with pytest.raises(ConfigurationError, match="needs a 'pika' section"):
        resolve_broker_url("PikaTransport", SiteConfiguration())
    with pytest.raises(InvalidURL, match="unknown transport scheme 'nosuch'"):
        resolve_broker_url("nosuch://host", cross_process=True)


def test_a_password_in_a_refused_value_is_hidden() -> None:
    with pytest.raises(InvalidURL) as caught:
        resolve_broker_url("user:secret@host")
    assert "secret" not in str(caught.value)


def test_cross_process_refuses_an_in_process_broker(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature, match="in-process broker"):
        resolve_broker_url("memory://x", cross_process=True)
    assert resolve_broker_url("memory://x") == "memory://x"
    shared = f"sqlite:///{tmp_path}/b.db"
    assert resolve_broker_url(shared, cross_process=True) == shared


def test_create_transport_without_a_url_follows_the_same_rule(
    data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert create_transport().url == embedded_broker_url()
    monkeypatch.setenv("ZOCALO_TRANSPORT", "memory://from-env")
    assert create_transport().url == "memory://from-env"
