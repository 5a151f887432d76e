"""The Mailer against a real SMTP server: python-zocalo's requests, and a message acked
only once the server accepted its mail (refused: retried, then dead-lettered)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from smtp_server import SmtpServer, free_port

from zocalo.config import SiteConfiguration
from zocalo.errors import ConfigurationError
from zocalo.recipe import Recipe, wire
from zocalo.services.mailer import QUEUE, Mailer
from zocalo.services.mailer import SmtpServer as Smtp
from zocalo.transport import create_transport, dlq_name

SENDER = "zocalo@example.org"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def client(any_broker):
    transport = create_transport(any_broker)
    transport.connect()
    transport.declare_queue(QUEUE)
    yield transport
    transport.close()


def text(mail) -> str:
    """A mail's body as written (SMTP carries it with CRLF line ends)."""
    return mail.get_content().replace("\r\n", "\n")


def mailer(port: int) -> Mailer:
    return Mailer(Smtp("127.0.0.1", port, SENDER), timeout=10)


def recipe_request(parameters: dict, payload) -> bytes:
    recipe = Recipe({"1": {"queue": QUEUE, "parameters": parameters}, "start": [[1, {}]]})
    return wire.encode(recipe, 1, [], {"ID": "job-1"}, payload)


def test_a_recipe_step_is_mailed_as_its_parameters_say(any_broker, client, smtp, run_service):
    parameters = {
        "recipients": {"select": "i03", "i03": ["b@x.org", "a@x.org"], "all": ["a@x.org"]},
        "subject": "Spots found",
        "content": ["Result: {payload}\n", "{pprint_payload}\n", "{unknown} stays"],
    }
    client.send(
        QUEUE, recipe_request(parameters, ["line 1", "line 2"]), headers={"workflows-recipe": True}
    )
    run_service(mailer(smtp.port), any_broker)
    ((envelope, mail),) = smtp.inbox.wait_for(1)
    assert envelope == ["a@x.org", "b@x.org"]
    assert (mail["Subject"], mail["To"], mail["From"]) == (
        "Spots found",
        "a@x.org, b@x.org",
        SENDER,
    )
    expected = "Result: ['line 1', 'line 2']\nline 1\nline 2\n{unknown} stays\n"
    assert text(mail) == expected


def test_a_plain_message_is_mailed_with_pythons_defaults(any_broker, client, smtp, run_service):
    message = {
        "parameters": {"recipient": "ops@x.org", "from": "me@x.org"},
        "content": "n={payload[n]}",
        "n": 3,
    }
    client.send(QUEUE, wire.dumps(message))
    run_service(mailer(smtp.port), any_broker)
    ((envelope, mail),) = smtp.inbox.wait_for(1)
    assert (envelope, mail["Subject"], mail["From"]) == (
        ["ops@x.org"],
        "mail notification via zocalo",
        "me@x.org",
    )
    assert text(mail) == "n=3\n"


def test_a_refused_mail_is_retried_and_acked_only_once_accepted(
    any_broker, client, smtp, run_service, wait_until
):
    smtp.inbox.refuse = 2
    client.send(QUEUE, wire.dumps({"parameters": {"recipients": ["ops@x.org"]}, "content": "hi"}))
    runner = run_service(mailer(smtp.port), any_broker, retry_delay=0.05, max_attempts=5)
    assert len(smtp.inbox.wait_for(1)) == 1
    wait_until(lambda: runner.stats.handled == 1, "the message handled")
    assert (smtp.inbox.refused, runner.stats.retried, runner.stats.dead_lettered) == (2, 2, 0)


def test_a_mail_the_server_never_takes_is_dead_lettered_with_the_reason(
    any_broker, client, run_service, collector
):
    closed = free_port()  # nothing listens there
    client.send(QUEUE, wire.dumps({"parameters": {"recipients": ["ops@x.org"]}, "content": "hi"}))
    dead = collector(ack_with=client)
    client.subscribe(dlq_name(QUEUE), dead)
    run_service(mailer(closed), any_broker, retry_delay=0.05)
    (letter,) = dead.wait_for_count(1, timeout=30)
    reason = letter.headers["zocalo-dlq-reason"]
    assert reason.startswith(f"MailNotSent: SMTP server 127.0.0.1:{closed} did not take the mail")
    assert reason.endswith("(after 3 attempts)")


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ({"parameters": {"content": "x"}, "content": "x"}, "no recipients"),
        ({"parameters": {"recipients": {"a": ["x@y.org"]}}, "content": "x"}, "needs 'select'"),
        ({"parameters": {"recipients": {"select": "b"}}, "content": "x"}, "selected group 'b'"),
        ({"parameters": {"recipients": "x@y.org"}}, "non-empty 'parameters' and 'content'"),
        ({"parameters": {"recipients": "x@y.org", "content": ""}, "content": ""}, "non-empty"),
    ],
)
def test_a_request_that_cannot_be_mailed_is_dead_lettered_at_once_saying_why(
    any_broker, client, smtp, run_service, collector, request_, why
):
    client.send(QUEUE, wire.dumps(request_))
    dead = collector(ack_with=client)
    client.subscribe(dlq_name(QUEUE), dead)
    runner = run_service(mailer(smtp.port), any_broker, retry_delay=0.01)
    (letter,) = dead.wait_for_count(1, timeout=30)
    assert runner.stats.retried == 0, "dead-lettered at once: retrying cannot help"
    assert letter.headers["zocalo-dlq-reason"].startswith("UnmailableRequest: ")
    assert why in letter.headers["zocalo-dlq-reason"]
    assert smtp.inbox.mails == []


def test_without_an_smtp_section_the_mailer_does_not_start():
    with pytest.raises(ConfigurationError, match="smtp section"):
        service = Mailer()
        service.site_config = SiteConfiguration()
        service.initializing()
