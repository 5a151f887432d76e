"""What the dead-letter tools refuse, each in one line that names the file or queue."""

from __future__ import annotations

from zocalo.errors import ZocaloError


class DeadLetterError(ZocaloError):
    """A dead-letter or queue tool cannot do what it was asked (nothing was lost)."""


class UnreadableFile(DeadLetterError):
    """A file that is missing, unreadable, or not a dead letter (the message names it)."""


class NoSuchQueue(DeadLetterError):
    """A queue the broker does not have."""


class CannotReinject(DeadLetterError):
    """A dead letter whose destination cannot be worked out, or cannot take it."""
