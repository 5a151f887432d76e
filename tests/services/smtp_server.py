"""A real SMTP server (aiosmtpd) on a free local port, for the Mailer's tests."""

from __future__ import annotations

import socket
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Inbox:
    """aiosmtpd's handler: keeps every mail it accepts; refuses the first ``refuse``
    deliveries with a temporary error (as a server that is busy or out of disk)."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], EmailMessage]] = []
        self.refuse = 0
        self.refused = 0
        self._arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refused < self.refuse:
            self.refused += 1
            return "451 4.3.0 Try again later"
        with self._arrived:
            mail = message_from_bytes(envelope.content, policy=policy.default)
            self.mails.append((list(envelope.rcpt_tos), mail))  # type: ignore[arg-type]
            self._arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[list[str], EmailMessage]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.mails) >= count, timeout), (
                f"{len(self.mails)} mails arrived, not {count}"
            )
            return list(self.mails)


class SmtpServer:
    """Started on enter, stopped on exit."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
