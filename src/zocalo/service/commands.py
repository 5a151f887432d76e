"""Commands to running services, broadcast on the ``command`` topic (``zocalo.shutdown``).

A command is a JSON object as python-workflows sends it: ``{"command": "shutdown", ...}``
with a target, ``host`` (a supervisor's host id), ``service`` (a class name, or the name
a service was started with) or ``all``. Each service decides whether a command is for it
with :func:`command_matches`: the format is decided here, both ways.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zocalo.transport.base import Transport

COMMAND_TOPIC = "command"
#: Each supervisor's queue bound to the command topic, kept between its workers.
COMMAND_QUEUE_PREFIX = "zocalo.command."
#: A supervisor's command queue outlives each of its workers by this long, so a command
#: broadcast while a worker restarts waits for the next one (see ``Identity.commands``).
COMMANDS_KEPT_FOR = 600.0


def qualify_host(host: str) -> str:
    """``name.pid`` gets this machine's reversed domain in front, as python-zocalo does,
    so that the short id an operator reads off a process list names a host id."""
    if host.count(".") != 1:
        return host
    domain = socket.getfqdn().split(".")[1:]
    return ".".join([*reversed(domain), host])


def shutdown_commands(
    hosts: Iterable[str] = (), services: Iterable[str] = (), everyone: bool = False
) -> list[dict[str, Any]]:
    """One shutdown command per target: each host id, each service, and ``all``.

    The service name ``none`` (any case) becomes ``null``: the services that report no
    service class.
    """
    commands: list[dict[str, Any]] = [
        {"command": "shutdown", "host": qualify_host(host)} for host in hosts
    ]
    commands += [
        {"command": "shutdown", "service": None if service.lower() == "none" else service}
        for service in services
    ]
    if everyone:
        commands.append({"command": "shutdown", "all": True})
    return commands


def broadcast_command(transport: Transport, command: dict[str, Any]) -> str:
    """Broadcast ``command`` to every service on the (connected) ``transport``; the body sent."""
    body = json.dumps(command)
    transport.broadcast(COMMAND_TOPIC, body)
    return body


def command_matches(command: Any, host: str, names: Collection[str | None]) -> bool:
    """Whether a broadcast command targets this service (reference rules, plus ``all``).

    ``names`` are what ``zocalo.shutdown -s NAME`` may call the service: its class
    name (the reference's rule) and the name it was started with (an entry point
    such as ``demo.FindSpots``, or ``module:Class``).
    """
    if not isinstance(command, dict):
        return False
    if command.get("all") is True:
        return True
    if "host" not in command and "service" not in command:
        return False
    if "host" in command and command["host"] != host:
        return False
    return "service" not in command or command["service"] in names
