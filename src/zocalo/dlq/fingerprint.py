"""What a dead letter is, and which others failed the same way (its fingerprint).

Dead letters that failed alike share a fingerprint: the queue, the recipe step, the
exception type and the exception's message with its particulars (numbers, ids, hex
strings) taken out. 312 images of one collection failing in spot finding with
``FileNotFoundError: /data/cm1234/image_00042.cbf`` are one group, not 312.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zocalo.errors import InvalidMessage
from zocalo.recipe import wire
from zocalo.transport.dead_letters import DLQ_HISTORY_HEADER, DLQ_QUEUE_HEADER, DLQ_REASON_HEADER

#: The runner's reason for a handler's failure: ``Type: message (after N attempts)``.
_EXCEPTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.*?)(?: \(after \d+ attempts\))?$", re.S)
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
#: Longest normalised message kept (a traceback in a reason must not make a key of pages).
PATTERN_LENGTH = 300


@dataclass(frozen=True)
class DeadLetterFacts:
    """Why and where a message died, read from its headers and body."""

    queue: str
    reason: str
    step: int | None
    recipe_id: str | None
    history: list[Any]
    exception: str
    pattern: str

    @property
    def fingerprint(self) -> str:
        key = json.dumps([self.queue, self.step, self.exception, self.pattern])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "step": self.step,
            "recipe_id": self.recipe_id,
            "reason": self.reason,
            "exception": self.exception,
            "fingerprint": self.fingerprint,
        }


def normalise(message: str) -> str:
    """``message`` without its particulars: ids, hex strings and numbers become ``<...>``."""
    text = _UUID.sub("<uuid>", message)
    text = _HEX.sub("<hex>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:PATTERN_LENGTH]


def split_reason(reason: str) -> tuple[str, str]:
    """(exception type, its message) of the runner's reasons; ("", reason) of others."""
    match = _EXCEPTION.match(reason)
    if match is None:
        return "", reason
    return match.group(1), match.group(2)


def facts(dead_letter_queue: str, headers: Mapping[str, Any], body: bytes) -> DeadLetterFacts:
    """What the dead letter in ``dead_letter_queue`` says about itself."""
    queue = headers.get(DLQ_QUEUE_HEADER)
    if not isinstance(queue, str) or not queue:
        queue = dead_letter_queue.removeprefix("dlq.")
    reason = headers.get(DLQ_REASON_HEADER)
    reason = reason if isinstance(reason, str) and reason else "unknown (no reason recorded)"
    history = headers.get(DLQ_HISTORY_HEADER)
    if not isinstance(history, list):
        deaths = headers.get("x-death")
        history = deaths if isinstance(deaths, list) else []
    step, recipe_id = _where_in_recipe(headers, body)
    exception, message = split_reason(reason)
    return DeadLetterFacts(queue, reason, step, recipe_id, history, exception, normalise(message))


def _where_in_recipe(headers: Mapping[str, Any], body: bytes) -> tuple[int | None, str | None]:
    """(step, recipe ID) of a recipe message; whatever can be read of a broken one."""
    if wire.is_recipe_message(headers):
        try:
            message = wire.decode(body, headers, "dead letter")
            return message.pointer, message.recipe_id
        except InvalidMessage:
            pass
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    pointer = data.get("recipe-pointer")
    environment = data.get("environment")
    recipe_id = environment.get("ID") if isinstance(environment, dict) else None
    step = pointer if isinstance(pointer, int) and not isinstance(pointer, bool) else None
    return step, None if recipe_id is None else str(recipe_id)
