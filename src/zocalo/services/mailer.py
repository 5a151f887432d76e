"""Mailer: mail notifications from messages, python-zocalo's service (queue
``mailnotification``), through the site configuration's ``smtp`` section.

A recipe message is mailed as its step's ``parameters`` say; a plain message must be
``{"parameters": {...}, "content": ...}``. Parameters: ``recipients`` (or ``recipient``):
an address, a list, or ``{"select": KEY, KEY: [...], "all": [...]}`` (the group KEY,
plus ``all``; deduplicated and sorted); ``from`` (default: the ``smtp`` section's);
``subject`` (default ``mail notification via zocalo``); ``content`` (text, or a list of
texts joined; a plain message's own ``content`` otherwise). ``{payload}`` and
``{pprint_payload}`` in the content are filled in, any other ``{...}`` is left as it is.

Unlike python-zocalo's, which acknowledged the message before sending and lost the mail
on any SMTP error, the message is acknowledged only once the SMTP server accepted the
mail: a refused or failed delivery raises, so the runner retries it later and, after its
last attempt, dead-letters it with the SMTP error as the reason. A request that can never
be mailed (no recipients, no content) is dead-lettered at once, saying why.
"""

from __future__ import annotations

import email.message
import pprint
import smtplib
from dataclasses import dataclass
from typing import Any

from zocalo.errors import ConfigurationError, InvalidMessage, ZocaloError
from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, handler

QUEUE = "mailnotification"
DEFAULT_SUBJECT = "mail notification via zocalo"
#: Seconds the SMTP server has to answer (python-zocalo's).
SMTP_TIMEOUT = 60.0


class UnmailableRequest(InvalidMessage):
    """A message that can never become a mail (no recipients, no content): the runner
    dead-letters it at once, without retries."""


class MailNotSent(ZocaloError):
    """The SMTP server did not take the mail (it is tried again later)."""


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    sender: str | None = None


@dataclass(frozen=True)
class Mail:
    recipients: list[str]
    sender: str
    subject: str
    content: str


class _KeepUnknown(dict[str, Any]):
    """Placeholders the content does not define are left as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def recipients_of(parameters: dict[str, Any]) -> list[str]:
    """The addresses a request names (see the module docstring)."""
    given = parameters.get("recipients", parameters.get("recipient"))
    if not given:
        raise UnmailableRequest("no recipients (parameter 'recipients')")
    if not isinstance(given, dict):
        return [str(address) for address in _as_list(given)]
    if "select" not in given:
        raise UnmailableRequest("a recipients dictionary needs 'select' naming the group to use")
    chosen = {str(a) for a in _as_list(given.get(given["select"], [])) if a}
    if given.get("all"):
        chosen |= {str(a) for a in _as_list(given["all"]) if a}
    if not chosen:
        raise UnmailableRequest(f"no recipients in the selected group {given['select']!r}")
    return sorted(chosen)


def fill_in(content: str, payload: Any) -> str:
    """``{payload}`` and ``{pprint_payload}`` filled in; a content that is no format
    string (a lone brace) is sent as it is."""
    pretty = "\n".join(map(str, payload)) if isinstance(payload, list) else pprint.pformat(payload)
    try:
        return content.format_map(_KeepUnknown(payload=payload, pprint_payload=pretty))
    except (ValueError, IndexError, AttributeError, KeyError, TypeError):
        return content


def mail_for(step: RecipeStep, payload: Any, server: SmtpServer) -> Mail:
    """The mail a message asks for; :class:`UnmailableRequest` saying why there is none."""
    if step.recipe is not None:
        parameters, content = dict(step.parameters), None
    else:
        if not isinstance(payload, dict) or not payload.get("parameters"):
            raise UnmailableRequest("a plain message needs non-empty 'parameters' and 'content'")
        if not payload.get("content") or not isinstance(payload["parameters"], dict):
            raise UnmailableRequest("a plain message needs non-empty 'parameters' and 'content'")
        parameters, content = payload["parameters"], payload["content"]
    recipients = recipients_of(parameters)
    content = parameters.get("content", content)
    if not content:
        raise UnmailableRequest("no content (parameter 'content')")
    if isinstance(content, list):
        content = "".join(map(str, content))
    sender = parameters.get("from") or server.sender
    if not sender:
        raise UnmailableRequest("no sender: set 'from' in the smtp section or the message")
    subject = str(parameters.get("subject") or DEFAULT_SUBJECT)
    return Mail(recipients, str(sender), subject, fill_in(str(content), payload))


def send_mail(server: SmtpServer, mail: Mail, timeout: float = SMTP_TIMEOUT) -> list[str]:
    """Hand ``mail`` to the SMTP server; the recipients it refused (the others got it).
    :class:`MailNotSent` if it took the mail for nobody."""
    message = email.message.EmailMessage()
    message["Subject"] = mail.subject
    message["To"] = ", ".join(mail.recipients)
    message["From"] = mail.sender
    message.set_content(mail.content)
    try:
        with smtplib.SMTP(server.host, server.port, timeout=timeout) as smtp:
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as error:
        where = f"{server.host}:{server.port}"
        raise MailNotSent(f"SMTP server {where} did not take the mail: {error}") from None
    return sorted(refused)


class Mailer(Service):
    """Sends mail notifications; acknowledges a message once its mail is accepted."""

    name = "Mail Notifications"

    def __init__(
        self,
        smtp: SmtpServer | None = None,
        *,
        timeout: float = SMTP_TIMEOUT,
    ) -> None:
        super().__init__()
        self._given = smtp
        self.timeout = timeout
        self.server: SmtpServer | None = smtp

    def initializing(self) -> None:
        if self._given is not None:
            return
        section = self.site_config.plugins.get("smtp")
        if section is None:
            raise ConfigurationError(
                "the Mailer needs the site configuration's smtp section (host, port, from), "
                "and none is active"
            )
        self.server = SmtpServer(section.host, int(section.port), section.from_)

    @handler(QUEUE, allow_plain=True)
    def notify(self, step: RecipeStep, payload: Any) -> None:
        assert self.server is not None
        mail = mail_for(step, payload, self.server)
        self.log.info("sending mail notification %r to %s", mail.subject, mail.recipients)
        refused = send_mail(self.server, mail, self.timeout)
        if refused:
            self.log.warning("the SMTP server refused %s (the others got the mail)", refused)
