"""Every tool that lists RabbitMQ queues through the management API (zocalo queues, the
dead-letter tools, Schlockmeister's listing) goes on to the next URL when one cannot be
reached, and says which it tried when none can."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from dlq_helpers import one_error_line

from zocalo.cli.dlq_check import command as dlq_check
from zocalo.cli.dlq_purge import command as dlq_purge
from zocalo.cli.main import cli
from zocalo.config.plugins import RabbitMQAPIConfig
from zocalo.dlq.listing import queue_listing
from zocalo.transport import dlq_name

pytestmark = pytest.mark.rabbitmq

SECRET = "secret-pw"
#: Nothing listens on ports 1 and 2: connecting is refused at once.
CLOSED = f"http://guest:{SECRET}@127.0.0.1:1/api"
ALSO_CLOSED = "http://127.0.0.1:2/api"
REAL = "http://127.0.0.1:15672/api"


def site_file(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        "version: 1\n"
        "rabbitmqapi:\n"
        "  plugin: rabbitmqapi\n"
        f"  base_url: {base_url}\n"
        "  username: guest\n"
        "  password: guest\n"
        "environments:\n"
        "  test: [rabbitmqapi]\n"
    )
    return path


def invoke(command, site: Path, *arguments: str) -> Result:
    return CliRunner().invoke(
        command,
        [*arguments, "--config", str(site), "-e", "test"],
        env={"ZOCALO_CONFIG": None, "ZOCALO_DEFAULT_ENV": None, "COLUMNS": "250"},
        catch_exceptions=False,
    )


def test_the_tools_go_on_to_the_next_management_url(rabbitmq_vhost_url, make_broker, tmp_path):
    broker = make_broker(rabbitmq_vhost_url)
    queue = broker.queue("failover")
    broker.dead_letter(queue, [b"1"])
    site = site_file(tmp_path, f"{CLOSED}, {REAL}")

    listed = invoke(cli, site, "queues", "-t", rabbitmq_vhost_url)
    assert listed.exit_code == 0, listed.output
    assert queue in listed.output

    checked = invoke(dlq_check, site, "-t", rabbitmq_vhost_url, "--json")
    assert checked.exit_code in (0, 1) and "Error" not in checked.output, checked.output

    purged = invoke(
        dlq_purge, site, "-t", rabbitmq_vhost_url, "--location", str(tmp_path / "DLQ"), queue
    )
    assert purged.exit_code == 0, purged.output
    assert f"Found 1 DLQ messages in {dlq_name(queue)}" in purged.stdout

    # Schlockmeister's listing, which lives as long as the service: each listing fails over.
    plugin = RabbitMQAPIConfig(
        plugin="rabbitmqapi", base_url=f"{CLOSED}, {REAL}", username="guest", password="guest"
    )
    with queue_listing(rabbitmq_vhost_url, rabbitmq_api=plugin) as listing:
        assert dlq_name(queue) in listing.dead_letter_queues()
        assert dlq_name(queue) in listing.dead_letter_queues()


def test_when_no_management_url_answers_one_line_names_each(
    rabbitmq_vhost_url, make_broker, tmp_path
):
    broker = make_broker(rabbitmq_vhost_url)
    queue = broker.queue("unlisted")
    broker.dead_letter(queue, [b"1"])
    site = site_file(tmp_path, f"{CLOSED}, {ALSO_CLOSED}")
    location = str(tmp_path / "DLQ")
    for command, arguments in [
        (cli, ["queues", "-t", rabbitmq_vhost_url]),
        (dlq_check, ["-t", rabbitmq_vhost_url]),
        (dlq_purge, ["-t", rabbitmq_vhost_url, "--location", location, queue]),
    ]:
        result = invoke(command, site, *arguments)
        assert result.exit_code == 1
        line = one_error_line(result.output)
        tried = "tried http://guest:***@127.0.0.1:1/api, http://127.0.0.1:2/api"
        assert f"no RabbitMQ management API answered ({tried})" in line, line
        assert SECRET not in result.output
    assert [d.body for d in broker.take_all(dlq_name(queue))] == [b"1"], "nothing was taken"


def test_a_failure_after_connecting_names_the_api_without_its_password(tmp_path):
    """The API answered, then refused the listing (here: no such vhost): the one line
    names the API it used, its password left out as everywhere else."""
    site = site_file(tmp_path, f"http://guest:{SECRET}@127.0.0.1:15672/api")
    url = f"amqp://guest:guest@127.0.0.1:5672/no-such-vhost-{uuid.uuid4().hex[:8]}"
    listed = invoke(cli, site, "queues", "-t", url)
    assert listed.exit_code == 1
    assert "404" in listed.output and "127.0.0.1:15672" in listed.output
    assert SECRET not in listed.output
