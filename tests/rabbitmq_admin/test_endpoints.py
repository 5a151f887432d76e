"""Which management API configure_rabbitmq uses, as whom, and failing over to the next URL."""

from __future__ import annotations

import pytest

from zocalo.config.plugins import RabbitMQAPIConfig
from zocalo.errors import ZocaloError
from zocalo.rabbitmq_admin.api import ManagementAPIError
from zocalo.rabbitmq_admin.endpoints import (
    ManagementEndpoints,
    NoManagementCredentials,
    NoManagementURL,
    management_endpoints,
)

API_URL = "http://127.0.0.1:15672/api"
#: Nothing listens on port 1: connecting is refused at once.
DEAD_URL = "http://127.0.0.1:1/api"


def plugin(base_url: str, username: str = "site-user", password: str = "site-pw"):
    return RabbitMQAPIConfig(
        plugin="rabbitmqapi", base_url=base_url, username=username, password=password
    )


def test_a_given_url_and_account_win_over_the_plugin() -> None:
    site = plugin("http://a/api, http://b/api")
    assert management_endpoints("http://given/api", "me", "pw", site) == ManagementEndpoints(
        ("http://given/api",), "me", "pw"
    )
    from_site = management_endpoints(plugin=site)
    assert from_site == ManagementEndpoints(
        ("http://a/api", "http://b/api"), "site-user", "site-pw"
    )
    assert management_endpoints("http://given/api", plugin=site).username == "site-user"
    assert management_endpoints(plugin=site, password="other").password == "other"


def test_the_password_is_never_shown() -> None:
    assert "site-pw" not in repr(management_endpoints(plugin=plugin("http://a/api")))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({}, NoManagementURL, "no management API is configured"),
        ({"plugin": plugin(" , ")}, NoManagementURL, "no management API is configured"),
        ({"api_url": "http://a/api"}, NoManagementCredentials, "no user and password"),
        ({"api_url": "http://a/api", "username": "me"}, NoManagementCredentials, "no password"),
        ({"api_url": "http://u:secret@a/api", "password": "pw"}, NoManagementCredentials, "user"),
    ],
)
def test_nothing_to_connect_to_is_one_line(arguments, error, message) -> None:
    with pytest.raises(error, match=message) as caught:
        management_endpoints(**arguments)
    assert isinstance(caught.value, ZocaloError)
    assert "secret" not in str(caught.value)


@pytest.mark.rabbitmq
def test_the_first_url_that_answers_is_used() -> None:
    api = ManagementEndpoints((DEAD_URL, API_URL), "guest", "guest").connect()
    try:
        assert api.base_url == API_URL
        assert api.whoami()["name"] == "guest"
    finally:
        api.close()


def test_when_none_answers_every_failure_is_named_in_order() -> None:
    other_dead = "http://127.0.0.1:2/api"
    with pytest.raises(ManagementAPIError) as caught:
        ManagementEndpoints((DEAD_URL, other_dead), "guest", "guest").connect(timeout=5)
    message = str(caught.value)
    assert message.index(DEAD_URL) < message.index(other_dead)
    assert "; " in message
    assert isinstance(caught.value, ZocaloError)
