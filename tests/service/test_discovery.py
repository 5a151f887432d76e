"""Finding services by name, as zocalo.service -s does."""

from __future__ import annotations

import pytest

from zocalo.examples.demo_services import FindSpots
from zocalo.service.discovery import (
    ServiceNotFound,
    available_services,
    load_service,
    resolve_name,
)

NAMES = ["Dispatcher", "DLQ", "dispatcherx", "Mailer", "mailer2"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Dispatcher", "Dispatcher"),  # exact wins over prefix
        ("dlq", "DLQ"),  # case-insensitive exact
        ("Mail", "Mailer"),  # unique case-sensitive prefix
        ("mailer2", "mailer2"),
    ],
)
def test_resolution_order(name, expected):
    assert resolve_name(name, NAMES) == expected


def test_ambiguous_and_unknown_names_are_clear_errors():
    with pytest.raises(ServiceNotFound, match="ambiguous: Mailer, mailer2"):
        resolve_name("MAILE", NAMES)
    with pytest.raises(ServiceNotFound, match="no service matches 'Nope'"):
        resolve_name("Nope", NAMES)


def test_both_entry_point_groups_are_searched():
    services = available_services()
    assert services["demo.FindSpots"].group == "zocalo.services"
    # python-workflows registers its samples under workflows.services
    assert services["SampleConsumer"].group == "workflows.services"


def test_loading_by_entry_point_and_by_import_path():
    assert load_service("demo.FindSpots") is FindSpots
    assert load_service("zocalo.examples.demo_services:FindSpots") is FindSpots


def test_a_workflows_common_service_is_refused_with_a_reason():
    with pytest.raises(ServiceNotFound, match="not a zocalo Service"):
        load_service("SampleConsumer")
    with pytest.raises(ServiceNotFound, match="cannot load service"):
        load_service("no.such.module:Thing")
