"""The small error hierarchy users catch (everything derives from ZocaloError), and how
an error is told in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class ZocaloError(Exception):
    """Base of every error Zocalo raises on purpose."""


class TransportError(ZocaloError):
    """A broker operation failed."""


class ConnectionFailed(TransportError):
    """The broker could not be reached, or refused us (URL, credentials, vhost)."""


class UnsupportedFeature(TransportError):
    """The transport cannot honour a requested feature (priority, delay, ...)."""


class PublishFailed(TransportError):
    """The broker did not accept a message; the input that produced it was not acked."""


class InvalidURL(TransportError):
    """A transport URL that names no known transport or is malformed."""


class InvalidRecipe(ZocaloError, ValueError):
    """A recipe that fails validation. The message names the step and the field."""


class InvalidMessage(ZocaloError, ValueError):
    """A received body that is not a usable message (bad JSON, not a recipe, bad pointer)."""


class AdminError(ZocaloError):
    """Administering a broker failed: its management API, a topology file, or a plan
    that cannot (or may not) be carried out (``zocalo.configure_rabbitmq``, ``zocalo queues``)."""


class ConfigurationError(ZocaloError):
    """A site configuration that cannot be used. The message names file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.detail = message
        prefix = ""
        if self.file is not None:
            prefix = self.file + (f", line {line}" if line is not None else "") + ": "
        super().__init__(prefix + message)


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line (each run of whitespace, newlines included, one space), cut
    to ``limit`` characters with a note of how many more there were: an error may carry
    a whole document, and a log line or a message header must stay readable (and within
    what a broker accepts in one header)."""
    line = " ".join(text.split())
    if limit is not None and len(line) > limit:
        line = f"{line[:limit]}... ({len(line) - limit} more characters)"
    return line
