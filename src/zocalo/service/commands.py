"""Commands to running services, broadcast on the ``command`` topic (``zocalo.shutdown``).

A command is a JSON object as python-workflows sends it: ``{"command": "shutdown", ...}``
with a target, ``host`` (a supervisor's host id), ``service`` (a class name, or the name
a service was started with) or ``all``. Each service decides whether a command is for it
with :func:`zocalo.service.status.command_matches`; this module builds and sends them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from zocalo.service.status import COMMAND_TOPIC

if TYPE_CHECKING:
    from zocalo.transport.base import Transport


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
