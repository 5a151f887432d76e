"""``zocalo demo --transport stomp://...``: the mini-facility on ActiveMQ."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from zocalo.cli.demo import command as demo

pytestmark = pytest.mark.stomp


def test_the_demo_runs_on_activemq(stomp_url, activemq):
    result = CliRunner().invoke(
        demo,
        ["--collections", "2", "--images", "3", "--workers", "1", "--transport", stomp_url],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "nothing lost, nothing dead-lettered" in result.output
    assert activemq.password not in result.output
