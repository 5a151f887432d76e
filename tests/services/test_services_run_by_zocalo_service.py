"""Schlockmeister and the Mailer as an operator runs them: zocalo.service -s NAME, with the
broker and the site configuration given on its command line only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtp_server import SmtpServer

from zocalo.services.mailer import QUEUE
from zocalo.transport import Outgoing, create_transport, dlq_name
from zocalo.transport.dead_letters import dead_letter_marks


@pytest.fixture
def zocalo_service(tmp_path: Path) -> Iterator:
    """``zocalo_service(*arguments)``: zocalo.service in its own process group, its data
    directory in ``tmp_path``; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*arguments: str) -> subprocess.Popen[bytes]:
        environment = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
        process = subprocess.Popen(
            [sys.executable, "-m", "zocalo.cli.service", *arguments],
            env=environment,
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_schlockmeister_watches_the_broker_its_command_line_names(
    sqlite_broker, zocalo_service, wait_until, tmp_path
):
    """Its own connection goes to -t's broker, not to $ZOCALO_TRANSPORT's (the tests point
    that at a broker nobody uses)."""
    with create_transport(sqlite_broker) as client:
        marks = dead_letter_marks(reason="KeyError: 'x'", queue="spots", history=[])
        client.publish([Outgoing(dlq_name("spots"), b"{}", marks)]).result(30)
        zocalo_service("-s", "Schlockmeister", "-t", sqlite_broker)
        kept = tmp_path / "data" / "zocalo" / "DLQ"
        wait_until(lambda: list(kept.glob("*/msg-*")), "the dead letter kept", 60)
        assert (kept / "dead-letters.db").exists()


def test_the_mailer_reads_the_smtp_section_of_its_site_configuration(
    sqlite_broker, zocalo_service, tmp_path
):
    with SmtpServer() as smtp, create_transport(sqlite_broker) as client:
        config = tmp_path / "site.yaml"
        config.write_text(
            "version: 1\nmail:\n  plugin: smtp\n  host: 127.0.0.1\n"
            f"  port: {smtp.port}\n  from: zocalo@example.org\n"
            "environments:\n  live: [mail]\n"
        )
        request = {"parameters": {"recipients": ["ops@example.org"]}, "content": "hello"}
        client.send(QUEUE, json.dumps(request))
        zocalo_service("-s", "Mailer", "-t", sqlite_broker, "--config", str(config), "-e", "live")
        ((recipients, mail),) = smtp.inbox.wait_for(1, timeout=60)
        assert (recipients, mail["From"]) == (["ops@example.org"], "zocalo@example.org")
