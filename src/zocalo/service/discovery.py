"""Find services by name through entry points, as zocalo.service -s does."""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import EntryPoint, entry_points

from zocalo.errors import ZocaloError
from zocalo.service.base import Service

#: Our group first; the reference's group for facility packages that register there.
GROUPS = ("zocalo.services", "workflows.services")


class ServiceNotFound(ZocaloError, LookupError):
    """No service, or more than one, matches a name."""


def available_services() -> dict[str, EntryPoint]:
    """Every registered service name (our group wins on a clash)."""
    found: dict[str, EntryPoint] = {}
    for group in GROUPS:
        for entry in entry_points(group=group):
            found.setdefault(entry.name, entry)
    return found


def resolve_name(name: str, names: list[str]) -> str:
    """Exact, then case-insensitive, then unique prefix, then unique case-insensitive prefix."""
    lowered = name.lower()
    rules = (
        lambda candidate: candidate == name,
        lambda candidate: candidate.lower() == lowered,
        lambda candidate: candidate.startswith(name),
        lambda candidate: candidate.lower().startswith(lowered),
    )
    for rule in rules:
        matches = sorted(candidate for candidate in names if rule(candidate))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ServiceNotFound(f"service name {name!r} is ambiguous: {', '.join(matches)}")
    known = ", ".join(sorted(names)) or "none installed"
    raise ServiceNotFound(f"no service matches {name!r}; known services: {known}")


def check_service_name(name: str) -> str:
    """The registered name ``name`` resolves to, without importing the service.

    The supervisor uses this: importing a service (and its science libraries)
    belongs in the worker process only. ``module:Class`` is returned as given.
    """
    if ":" in name:
        return name
    return resolve_name(name, list(available_services()))


def service_class_name(name: str) -> str:
    """The class name a resolved service name points at, without importing it.

    A supervisor's stand-in reports it (and obeys ``shutdown -s CLASS``) while a
    crashed service waits for its restart.
    """
    target = name.rpartition(":")[2] if ":" in name else available_services()[name].attr
    return target.rpartition(".")[2]


def load_service(name: str) -> type[Service]:
    """The Service registered under ``name`` (resolved as above), or ``module:Class``."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        _working_directory_last_on_path()
        try:
            service_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise ServiceNotFound(f"cannot load service {name!r}: {error}") from None
        origin = name
    else:
        services = available_services()
        entry = services[resolve_name(name, list(services))]
        origin = f"{entry.name} ({entry.value}, group {entry.group})"
        try:
            service_class = entry.load()
        except (ImportError, AttributeError) as error:  # a broken install: restarts won't help
            raise ServiceNotFound(f"cannot load service {origin}: {error}") from None
    if not (isinstance(service_class, type) and issubclass(service_class, Service)):
        raise ServiceNotFound(
            f"{origin} is not a zocalo Service; "
            "a python-workflows CommonService runs under workflows' own frontend"
        )
    return service_class


def _working_directory_last_on_path() -> None:
    """Let ``module:Class`` find a module in the working directory.

    The supervisor runs Python with ``-P`` so that a stray ``select.py`` in the
    working directory cannot shadow the standard library; appending (not
    prepending) the directory keeps that promise while ``zocalo.service -s
    myservices:Name`` still finds ``./myservices.py``.
    """
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
