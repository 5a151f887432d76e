"""The click options every command gets, and how -t is resolved against the site config."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from zocalo.cli.config_options import resolve_transport_url, site_config_options
from zocalo.config import SiteConfiguration, load_configuration

SITE = """
version: 1
rmq: {plugin: pika, host: rabbit, port: 5672, username: zoc, password: 'p w', vhost: zocalo}
mq: {plugin: stomp, host: amq, port: 61613, username: zoc, password: pw, prefix: zocalo}
a: {plugin: storage, a: 1}
b: {plugin: storage, b: 2}
environments:
  live: [rmq, a]
  legacy: [mq, b]
  default: live
"""


@click.command()
@click.option("-t", "--transport", default=None)
@site_config_options
def show(transport: str | None, site_config: SiteConfiguration) -> None:
    click.echo(f"active={','.join(site_config.active)}")
    click.echo(f"storage={sorted(site_config.storage)}")
    click.echo(f"url={resolve_transport_url(transport, site_config)}")


@pytest.fixture
def site(write) -> Path:
    return write("site.yaml", SITE)


def test_options_load_and_activate(site: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(show, ["--config", str(site), "-e", "legacy", "--environment", "live"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "active=legacy,live",
        "storage=['a', 'b']",
        "url=amqp://zoc:p%20w@rabbit:5672/zocalo",  # live's pika came last
    ]


def test_zocalo_config_and_default_environment(site: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(show, [], env={"ZOCALO_CONFIG": str(site)})
    assert result.exit_code == 0, result.output
    assert "active=default" in result.output
    result = runner.invoke(
        show,
        ["-t", "StompTransport"],
        env={"ZOCALO_CONFIG": str(site), "ZOCALO_DEFAULT_ENV": "legacy"},
    )
    assert result.exit_code == 0, result.output
    assert "url=stomp://zoc:pw@amq:61613?prefix=zocalo" in result.output


def test_explicit_url_wins(site: Path) -> None:
    result = CliRunner().invoke(show, ["--config", str(site), "-t", "memory://x"])
    assert result.exit_code == 0, result.output
    assert "url=memory://x" in result.output


def test_bad_environment_is_a_clean_error(site: Path) -> None:
    result = CliRunner().invoke(show, ["--config", str(site), "-e", "nope"])
    assert result.exit_code == 1
    assert f"Error: {site}: environment 'nope' (-e) is not defined" in result.output
    assert "Traceback" not in result.output


def test_missing_section_for_named_transport(site: Path) -> None:
    result = CliRunner().invoke(show, ["--config", str(site), "-t", "StompTransport"])
    assert result.exit_code == 2
    assert "needs a 'stomp' section" in result.output
    assert "environment 'default'" in result.output


def test_resolve_transport_url_rules(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = load_configuration(site, environments=["live"])
    empty = load_configuration()
    assert resolve_transport_url("sqlite:///tmp/q.db", live) == "sqlite:///tmp/q.db"
    assert resolve_transport_url("PikaTransport", live) == "amqp://zoc:p%20w@rabbit:5672/zocalo"
    assert resolve_transport_url(None, live) == "amqp://zoc:p%20w@rabbit:5672/zocalo"
    assert resolve_transport_url(None, empty) is None
    assert resolve_transport_url(None, None) is None
    with pytest.raises(click.UsageError, match="neither a URL"):
        resolve_transport_url("rabbit", live)
    monkeypatch.setenv("ZOCALO_TRANSPORT", "memory://env")
    assert resolve_transport_url(None, live) == "memory://env"
    assert resolve_transport_url("memory://flag", live) == "memory://flag"
    monkeypatch.setenv("ZOCALO_TRANSPORT", "PikaTransport")
    assert resolve_transport_url(None, live) == "amqp://zoc:p%20w@rabbit:5672/zocalo"
    monkeypatch.setenv("ZOCALO_TRANSPORT", "nonsense")
    with pytest.raises(click.UsageError, match=r"\$ZOCALO_TRANSPORT 'nonsense'"):
        resolve_transport_url(None, live)
