"""The click options every command gets, and -t resolved against the site config through the
command line's one call (the rule itself: ``test_broker_url.py``)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from zocalo.cli.common import resolve_transport
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration

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
    click.echo(f"url={resolve_transport(transport, site_config, cross_process=False)}")


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
