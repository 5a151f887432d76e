"""``zocalo demo --transport stomp://...``: the demo's services, one process each, on ActiveMQ."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from zocalo.cli.demo import command as demo

pytestmark = pytest.mark.stomp


def test_the_demo_runs_on_activemq(stomp_url, activemq):
    result = CliRunner().invoke(
        demo,
        ["--jobs", "3", "--images", "2", "--rate", "100", "--transport", stomp_url],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "nothing lost, nothing dead-lettered" in result.output
    assert f"stomp://zocalo:***@127.0.0.1:{activemq.stomp_port}" in result.output
    assert activemq.password not in result.output


def test_the_demo_refuses_a_transport_in_process():
    result = CliRunner().invoke(demo, ["--in-process", "--transport", "stomp://h"])
    assert result.exit_code == 2
    assert "--in-process runs on its own in-memory broker" in result.output
