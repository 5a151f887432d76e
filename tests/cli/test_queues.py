"""zocalo queues: RabbitMQ through the management API, and queues that have consumers
but no messages on every transport."""

from __future__ import annotations

import time
import uuid
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner

from zocalo.cli.main import cli
from zocalo.config.plugins import RabbitMQAPIConfig
from zocalo.rabbitmq_admin import ManagementAPI
from zocalo.rabbitmq_admin.endpoints import management_target
from zocalo.rabbitmq_admin.queues import DELAYED_ROW
from zocalo.transport import create_transport


def table_rows(output: str) -> dict[str, list[str]]:
    """queue -> [ready, delayed, in flight, dead-lettered, consumers]."""
    return {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:7]]
        for line in output.splitlines()
        if line.count("│") >= 7
    }


def queues_command(url: str, *options: str) -> dict[str, list[str]]:
    result = CliRunner().invoke(cli, ["queues", "--transport", url, *options], terminal_width=250)
    assert result.exit_code == 0, result.output
    return table_rows(result.output)


@pytest.mark.rabbitmq
def test_rabbitmq_queues_come_from_the_management_api(rabbitmq_vhost_url, collector):
    tag = uuid.uuid4().hex[:8]
    full, busy, idle = f"q.full.{tag}", f"q.busy.{tag}", f"q.idle.{tag}"
    vhost = unquote(urlsplit(rabbitmq_vhost_url).path[1:])
    api = ManagementAPI("http://127.0.0.1:15672", "guest", "guest")
    with create_transport(rabbitmq_vhost_url) as client:
        client.declare_queue(full)
        client.send(full, b"1")
        client.send(full, b"2")
        holder = collector()  # never acks: one in flight, one ready behind it
        client.subscribe(busy, holder, prefetch=1)
        client.send(busy, b"held")
        client.send(busy, b"waiting")
        holder.wait_for_count(1)
        client.subscribe(idle, collector())  # a consumer, no messages
        client.subscribe_broadcast(f"topic.{tag}", collector())  # its queue is not listed
        client.send(idle, b"later", delay=600)

        def reported() -> dict[str, tuple[int, int, int]]:
            return {
                q["name"]: (
                    q.get("messages_ready"),
                    q.get("messages_unacknowledged"),
                    q.get("consumers"),
                )
                for q in api.queues(vhost)
            }

        expected = {full: (2, 0, 0), busy: (1, 1, 1), idle: (0, 0, 1)}
        deadline = time.monotonic() + 30
        while any(reported().get(name) != counts for name, counts in expected.items()):
            assert time.monotonic() < deadline, f"the management API reports {reported()}"
            time.sleep(0.25)  # its statistics are refreshed every few seconds

        rows = queues_command(rabbitmq_vhost_url)
    api.close()
    assert rows[full] == ["2", "0", "0", "0", "0"]
    assert rows[busy] == ["1", "0", "1", "0", "1"]
    assert rows[idle] == ["0", "0", "0", "0", "1"]
    assert int(rows[DELAYED_ROW][1]) >= 1
    assert not any(name.startswith("amq.gen") for name in rows)


@pytest.mark.rabbitmq
def test_a_wrong_management_url_is_one_clear_line(rabbitmq_vhost_url):
    result = CliRunner().invoke(
        cli,
        [
            "queues",
            "--transport",
            rabbitmq_vhost_url,
            "--management-url",
            "http://guest:secret-pw@127.0.0.1:1",
        ],
    )
    assert result.exit_code == 1
    assert "cannot reach the RabbitMQ management API at http://127.0.0.1:1/api" in result.output
    assert "--management-url" in result.output
    assert "Traceback" not in result.output and "secret-pw" not in result.output


def test_the_management_api_is_found_from_the_amqp_url():
    target = management_target("amqps://alice:p%40ss@rabbit.example:5671/zoc%2Falo")
    assert target.base_urls == ("https://rabbit.example:15671/api",)
    assert (target.username, target.password, target.vhost) == ("alice", "p@ss", "zoc/alo")
    plain = management_target("amqp://[::1]:5672/")
    assert plain.base_urls == ("http://[::1]:15672/api",)
    assert (plain.username, plain.vhost) == ("guest", "/")
    given = management_target(
        "amqp://alice:pw@rabbit.example/v", "https://admin:s3cret@mgmt.example:443/"
    )
    assert given.base_urls == ("https://mgmt.example:443/api",)
    assert (given.username, given.password, given.vhost) == ("admin", "s3cret", "v")


def test_every_node_of_the_amqp_url_or_of_the_plugin_is_a_management_api_to_try():
    cluster = management_target("amqp://u:p@one:5673/v?hosts=two:5672,[::2],one:5674")
    assert cluster.base_urls == (
        "http://one:15672/api",
        "http://two:15672/api",
        "http://[::2]:15672/api",
    ), "in order, each host once"
    site = RabbitMQAPIConfig(
        plugin="rabbitmqapi", base_url="http://a:15672, http://b/api/", username="s", password="x"
    )
    from_site = management_target("amqp://u:p@one/v", plugin=site)
    assert from_site.base_urls == ("http://a:15672/api", "http://b/api")
    assert (from_site.username, from_site.password, from_site.vhost) == ("s", "x", "v")


def test_sqlite_lists_a_queue_with_consumers_and_no_messages(sqlite_broker, collector):
    with create_transport(sqlite_broker) as client:
        client.subscribe("idle", collector())
        client.subscribe("idle", collector())
        client.subscribe_broadcast("news", collector())
        rows = queues_command(sqlite_broker)
    assert rows["idle"] == ["0", "0", "0", "0", "2"]
    assert "news" not in rows


def test_memory_lists_a_queue_with_consumers_and_no_messages(client, collector):
    client.subscribe("idle", collector())
    client.subscribe_broadcast("news", collector())
    stats = {entry.queue: entry for entry in client.queue_stats()}
    assert stats["idle"].consumers == 1 and stats["idle"].ready == 0
    assert "news" not in stats


@pytest.mark.stomp
def test_activemq_says_in_one_line_that_it_has_no_depths_by_state(activemq):
    result = CliRunner().invoke(cli, ["queues", "--transport", activemq.url(prefix="queues")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "ActiveMQ tells a STOMP client no queue depths by state" in result.output
