"""Keep pika quiet about the questions the transport asks by passive declares.

"Does this queue (the status exchange, the delay plugin's exchange) exist?" is
asked with a passive ``queue_declare``/``exchange_declare``; when the answer is
no, the broker closes that channel with 404 and pika logs every channel a broker
closes as a WARNING. Every start on a fresh vhost asks such questions, so the
transport marks the channels it opens for them and :class:`ProbeCloseFilter`
drops pika's line for exactly those channels and that answer. Any other close,
including a 403 to a probe, is still logged.
"""

from __future__ import annotations

import logging

from pika.channel import Channel

#: pika's logger for channel events (its ``Received remote Channel.Close`` line).
PIKA_CHANNEL_LOGGER = "pika.channel"
NOT_FOUND = 404
_MARK = "_zocalo_probe"


class ProbeCloseFilter(logging.Filter):
    """Drops ``Received remote Channel.Close (404)`` for a channel marked as a probe."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        expected_answer = (
            isinstance(args, tuple)
            and len(args) == 3
            and str(record.msg).startswith("Received remote Channel.Close")
            and args[0] == NOT_FOUND
            and getattr(args[2], _MARK, False)
        )
        return not expected_answer


def mark_probe(channel: Channel) -> None:
    """``channel`` asks whether something exists: its 404 close is an answer, not a fault."""
    setattr(channel, _MARK, True)
    logger = logging.getLogger(PIKA_CHANNEL_LOGGER)
    if not any(isinstance(existing, ProbeCloseFilter) for existing in logger.filters):
        logger.addFilter(ProbeCloseFilter())
