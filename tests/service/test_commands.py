"""Shutdown commands from the library: built as python-workflows sends them, broadcast on
the command topic, and understood by the services they name (and only those)."""

from __future__ import annotations

import json
import socket
import uuid

import pytest

from zocalo.service.commands import (
    COMMAND_TOPIC,
    broadcast_command,
    command_matches,
    qualify_host,
    shutdown_commands,
)
from zocalo.service.status import host_id
from zocalo.transport import create_transport


def test_one_command_per_target_in_order() -> None:
    assert shutdown_commands(["a.b.c.1"], ["none", "Mailer"], everyone=True) == [
        {"command": "shutdown", "host": "a.b.c.1"},
        {"command": "shutdown", "service": None},
        {"command": "shutdown", "service": "Mailer"},
        {"command": "shutdown", "all": True},
    ]
    assert shutdown_commands() == []


def test_a_short_host_id_gets_this_machines_reversed_domain() -> None:
    domain = socket.getfqdn().split(".")[1:]
    assert qualify_host("ws1.123") == ".".join([*reversed(domain), "ws1", "123"])
    assert qualify_host("uk.ac.example.ws1.123") == "uk.ac.example.ws1.123"
    assert qualify_host("123") == "123"


@pytest.mark.parametrize(
    ("targets", "reaches"),
    [
        ({"hosts": ["me"]}, {"me"}),
        ({"services": ["demo.FindSpots"]}, {"me", "twin"}),
        ({"services": ["Mailer"]}, {"other"}),
        ({"everyone": True}, {"me", "twin", "other"}),
    ],
)
def test_a_command_reaches_the_services_it_names(targets, reaches) -> None:
    services = {
        "me": (host_id(1), {"FindSpots", "demo.FindSpots"}),
        "twin": (host_id(2), {"FindSpots", "demo.FindSpots"}),
        "other": (host_id(3), {"Mailer"}),
    }
    hosts = [services[name][0] for name in targets.pop("hosts", [])]
    (command,) = shutdown_commands(hosts, **targets)
    reached = {
        name for name, (host, names) in services.items() if command_matches(command, host, names)
    }
    assert reached == reaches


def test_broadcast_command_sends_the_json_it_returns(collector) -> None:
    with create_transport(f"memory://commands-{uuid.uuid4().hex}") as transport:
        heard = collector()
        transport.subscribe_broadcast(COMMAND_TOPIC, heard)
        sent = broadcast_command(transport, {"command": "shutdown", "all": True})
        (delivery,) = heard.wait_for_count(1)
    assert json.loads(sent) == {"command": "shutdown", "all": True}
    assert delivery.body.decode() == sent
