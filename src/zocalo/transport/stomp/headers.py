"""Message headers <-> STOMP frame headers, which are text only.

Values: a string travels as it is (python-workflows' services read our headers
and we read theirs: ``workflows-recipe: True`` arrives as the text ``True``,
which the recipe code accepts). Any other JSON value (numbers, booleans, None,
lists, dicts, and strings STOMP cannot carry) travels as JSON text, and its
name is listed in :data:`TYPED_HEADER`, so we decode exactly those again.

Names: STOMP escapes ``:``, ``\\``, CR and LF in names and values
(:func:`escape`, applied when a frame is written). Names the protocol,
ActiveMQ or RabbitMQ give a meaning (``destination``, ``expires``, ``priority``,
``JMS...``) are the transport's: a message header of such a name is refused
rather than silently changing what the broker does, and on the way in they are
stripped, so :attr:`Delivery.headers` holds what the sender put there.

Dead letters ActiveMQ made itself (a python-workflows ``nack``, an expired
message) carry ``original-destination`` and ``dlqDeliveryFailureCause``: they
are described in our dead-letter header names, as RabbitMQ's ``x-death`` is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from zocalo.errors import TransportError
from zocalo.transport.dead_letters import (
    DLQ_REASON_HEADER,
    ENTRY_TIME_KEY,
    dead_letter_marks,
    utc_timestamp,
    with_history,
)
from zocalo.transport.stomp.flavour import RABBITMQ_HEADERS

#: The names of the headers whose values are JSON text (a JSON list of names).
TYPED_HEADER = "zocalo-typed"
#: The id of a message across the copies that return it to its queue.
MESSAGE_ID_HEADER = "zocalo-message-id"
#: Deliveries of the message before this copy of it was published.
DELIVERIES_HEADER = "zocalo-deliveries"
_OURS = frozenset({TYPED_HEADER, MESSAGE_ID_HEADER, DELIVERIES_HEADER})

#: Headers of STOMP frames and ActiveMQ's message properties: never a message's own.
PROTOCOL_HEADERS = frozenset(
    {
        "ack",
        "content-length",
        "content-type",
        "correlation-id",
        "destination",
        "dlqDeliveryFailureCause",
        "expires",
        "id",
        "message-id",
        "original-destination",
        "originalExpiration",
        "persistent",
        "priority",
        "receipt",
        "redelivered",
        "reply-to",
        "scheduledJobId",
        "selector",
        "subscription",
        "timestamp",
        "transaction",
        "type",
    }
)
_PROTOCOL_PREFIXES = ("AMQ_SCHEDULED_", "JMS", "activemq.")

_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}


class Uncarriable(TransportError):
    """A header STOMP cannot carry (text: the header and why)."""


def is_protocol_header(name: str) -> bool:
    return (
        name in PROTOCOL_HEADERS
        or name in _OURS
        or name in RABBITMQ_HEADERS
        or name.startswith(_PROTOCOL_PREFIXES)
    )


def escape(text: str) -> str:
    """A header name or value as a STOMP 1.2 frame writes it."""
    if "\\" not in text and ":" not in text and "\n" not in text and "\r" not in text:
        return text  # nearly every header: four scans in C, no generator
    return "".join(_ESCAPES.get(character, character) for character in text)


def too_long(headers: Mapping[str, str], limit: int) -> tuple[str, int] | None:
    """The first header whose line in a frame (``name:value`` escaped, in UTF-8 bytes)
    is longer than ``limit``, and that length; None if none is."""
    for name, value in headers.items():
        if 4 * (len(name) + 1 + len(value)) <= limit:  # at most 4 bytes a character
            continue
        size = len(escape(name).encode()) + 1 + len(escape(value).encode())
        if size > limit:
            return name, size
    return None


def to_stomp(headers: Mapping[str, Any]) -> dict[str, str]:
    """A message's headers as STOMP frame headers (text; escaped when framed).

    Raises :class:`Uncarriable` naming the header: a protocol name, a name that
    is not text, a value JSON cannot hold.
    """
    frame: dict[str, str] = {}
    typed: list[str] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise Uncarriable(f"header name {name!r} is not text")
        if is_protocol_header(name):
            raise Uncarriable(
                f"header {name!r} is a STOMP or ActiveMQ header name; the transport sets it"
            )
        if isinstance(value, str) and "\x00" not in value:
            frame[name] = value
            continue
        try:
            frame[name] = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise Uncarriable(f"header {name!r} cannot travel as JSON: {error}") from None
        typed.append(name)
    if typed:
        frame[TYPED_HEADER] = json.dumps(typed, ensure_ascii=False)
    return frame


def from_stomp(frame: Mapping[str, str]) -> dict[str, Any]:
    """A received frame's message headers, typed again; protocol headers left out."""
    typed = _names(frame.get(TYPED_HEADER))
    headers: dict[str, Any] = {}
    for name, value in frame.items():
        if is_protocol_header(name):
            continue
        if name in typed:
            try:
                headers[name] = json.loads(value, parse_constant=_no_json, parse_float=_finite)
                continue
            except ValueError:
                pass  # a foreign sender's header of that name: keep its text
        headers[name] = value
    return headers


def _no_json(text: str) -> Any:
    """NaN and the infinities: Python reads them, but no JSON holds them (a copy of the
    message could not carry them again: it would be refused once taken)."""
    raise ValueError(f"{text} is no JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError(f"{text} is no JSON value")
    return number


def received(frame: Mapping[str, str], queue_name: Callable[[str], str | None]) -> dict[str, Any]:
    """A received frame's message headers, with a broker's dead-lettering described."""
    headers = from_stomp(frame)
    translate_dead_letter(frame, headers, queue_name)
    return headers


def copied(frame: Mapping[str, str]) -> dict[str, str]:
    """The frame headers a copy of a received message carries: the message's own, as
    they arrived (typed ones still JSON text), with its expiry and priority."""
    kept = {
        name: value
        for name, value in frame.items()
        if not is_protocol_header(name) or name in (TYPED_HEADER, "priority")
    }
    if frame.get("expires", "0") != "0":
        kept["expires"] = frame["expires"]
    if "expiration" in frame:  # RabbitMQ's is relative: the copy lives that long again
        kept["expiration"] = frame["expiration"]
    return kept


def deliveries_before(frame: Mapping[str, str]) -> int:
    """How often this message was delivered before this copy of it was published."""
    try:
        count = int(frame.get(DELIVERIES_HEADER, "0"))
    except ValueError:
        return 0
    return max(0, count)


def translate_dead_letter(
    frame: Mapping[str, str], headers: dict[str, Any], queue_name: Callable[[str], str | None]
) -> None:
    """Describe a message ActiveMQ dead-lettered (a STOMP NACK, an expiry) in our
    dead-letter header names; one we dead-lettered already carries them."""
    original = frame.get("original-destination")
    if not original or DLQ_REASON_HEADER in headers:
        return
    cause = frame.get("dlqDeliveryFailureCause", "").strip()
    reason = cause.splitlines()[0] if cause else "rejected"
    queue = queue_name(original) or original
    entry = {
        "queue": queue,
        "reason": f"{reason} (dead-lettered by ActiveMQ)",
        ENTRY_TIME_KEY: utc_timestamp(),
    }
    headers.update(
        dead_letter_marks(
            reason=f"{reason} (dead-lettered by ActiveMQ)",
            queue=queue,
            history=with_history(headers, entry),
        )
    )


def _names(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset()
    try:
        names = json.loads(text)
    except ValueError:
        return frozenset()
    if not isinstance(names, list):
        return frozenset()
    return frozenset(name for name in names if isinstance(name, str))
