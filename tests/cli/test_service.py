"""zocalo.service runs a service in its own process and stops it cleanly."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zocalo.cli.service import command as service
from zocalo.launch import ServiceProcesses
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.transport import create_transport


def test_service_process_handles_messages_and_stops_on_sigterm(tmp_path, collector):
    url = f"sqlite:///{tmp_path}/broker.db"
    recipe = Recipe(
        {
            "1": {"queue": "demo.find_spots", "output": 2},
            "2": {"queue": "spots.out"},
            "start": [[1, {"image": n}] for n in range(1, 4)],
        }
    )
    with create_transport(url) as client:
        sink = collector(ack_with=client)
        client.subscribe("spots.out", sink)
        services = ServiceProcesses(["demo.FindSpots"], url)
        with services:
            step = RecipeStep()
            step.start(recipe)
            client.publish(step.outputs).result(10)
            deliveries = sink.wait_for_count(3)
        assert [p.returncode for p in services.processes] == [0], "a clean exit on SIGTERM"
    images = sorted(json.loads(d.body)["payload"]["image"] for d in deliveries)
    assert images == [1, 2, 3]
    assert services.stats["demo.FindSpots"]["handled"] == 3


def test_memory_transport_and_unknown_services_are_refused():
    result = CliRunner().invoke(service, ["-s", "demo.FindSpots", "--transport", "memory://"])
    assert result.exit_code == 2 and "in-process broker" in result.output
    result = CliRunner().invoke(
        service, ["-s", "NoSuchService", "--transport", "sqlite:///tmp/never-opened.db"]
    )
    assert result.exit_code == 2 and "no service matches 'NoSuchService'" in result.output


def test_queues_lists_depths_in_flight_and_dead_letters(tmp_path, collector, wait_until):
    from zocalo.cli.main import cli

    url = f"sqlite:///{tmp_path}/broker.db"
    with create_transport(url) as client:
        for number in range(3):
            client.send("alpha", str(number))
        client.send("beta", "later", delay=600)
        holder = collector()
        client.subscribe("alpha", holder, prefetch=1)
        holder.wait_for_count(1)
        client.send("gamma", "x")
        poison = collector()
        client.subscribe("gamma", poison)
        (bad,) = poison.wait_for_count(1)
        client.nack(bad, requeue=False, reason="poison")
        wait_until(  # a nack is settled asynchronously, like an ack
            lambda: any(s.queue == "dlq.gamma" and s.ready for s in client.queue_stats()),
            "the poison message in dlq.gamma",
        )
        result = CliRunner().invoke(cli, ["queues", "--transport", url], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:6]]
        for line in result.output.splitlines()
        if line.count("│") >= 6
    }
    assert rows["alpha"] == ["2", "0", "1", "0"]
    assert rows["beta"] == ["0", "1", "0", "0"]
    assert rows["gamma"] == ["0", "0", "0", "1"]


@pytest.mark.rabbitmq
def test_broker_errors_are_one_clear_line_and_a_non_zero_exit(rabbitmq_vhost_url):
    from urllib.parse import urlsplit

    parts = urlsplit(rabbitmq_vhost_url)
    cases = {
        f"amqp://guest:wrong@{parts.hostname}:{parts.port}/": "refused the credentials",
        f"amqp://guest:guest@{parts.hostname}:{parts.port}/no-such-vhost": "no-such-vhost",
        f"amqp://guest:guest@{parts.hostname}:1/": "cannot connect",
    }
    for url, expected in cases.items():
        result = CliRunner().invoke(service, ["-s", "demo.FindSpots", "--transport", url])
        assert result.exit_code == 1, (url, result.output)
        assert expected in result.output, (url, result.output)
        assert "Traceback" not in result.output
        assert "wrong" not in result.output, "the password is never printed"
