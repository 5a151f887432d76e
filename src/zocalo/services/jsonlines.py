"""JSONLines (``zocalo.service -s JSONLines``): each payload as one line of a file.

Compatible with python-zocalo's service: it consumes recipe messages on the
queue ``jsonlines``; the step's ``parameters`` say where and what::

    {"queue": "jsonlines", "parameters": {"output_filename": "/data/{guid}/results.jsonl",
                                          "include": ["image", "spots"], "exclude": []}}

``output_filename`` is required (parent directories are created). ``include``
keeps only the listed keys of an object payload, ``exclude`` then drops keys;
other payloads are written as they are. Each line is ``json.dumps(payload)``,
as the reference writes it.

A message is acknowledged only after its line is in the file: the line goes to
the kernel in one append write (no buffer of ours holds it) before the handler
returns, and the runner acks the message after that. Several JSONLines services
may append to one file: a line is one ``O_APPEND`` write, so lines never mix
(on a local filesystem). A write that fails (a full disk, a directory that
cannot be created) raises with the file and the reason: the message is not
lost but tried again later, and after the last attempt it goes to
``dlq.jsonlines`` with that reason.

The reference buffers up to 100 messages and writes them together; here every
line is written as its message is handled, so nothing waits for a batch to fill
(the runner already overlaps the acknowledgements, so there is no broker round
trip per message either).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zocalo.errors import InvalidMessage, ZocaloError
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.validation import short_repr
from zocalo.service import Service, handler

QUEUE = "jsonlines"


class LineNotWritten(ZocaloError):
    """A line could not be appended to its file; the message will be tried again."""


def selected(payload: Any, include: Sequence[str], exclude: Sequence[str]) -> Any:
    """``payload`` with only the ``include`` keys (if any), less the ``exclude`` keys."""
    if not isinstance(payload, dict):
        return payload
    if include:
        payload = {key: value for key, value in payload.items() if key in include}
    if exclude:
        payload = {key: value for key, value in payload.items() if key not in exclude}
    return payload


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` with one ``O_APPEND`` write (creating file and directories)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        remaining = memoryview(line)
        while remaining:
            remaining = remaining[os.write(descriptor, remaining) :]
    finally:
        os.close(descriptor)


def _key_list(parameters: dict[str, Any], name: str) -> list[str]:
    value = parameters.get(name) or []
    if not (isinstance(value, list) and all(isinstance(key, str) for key in value)):
        raise InvalidMessage(
            f"JSONLines step parameter {name!r} must be a list of keys, not {short_repr(value)}"
        )
    return value


class JSONLines(Service):
    """Writes every payload it receives as one JSON line of the step's ``output_filename``."""

    name = "JSONLines"

    @handler(QUEUE, prefetch=100)
    def write(self, step: RecipeStep, payload: Any) -> None:
        parameters = step.parameters
        filename = parameters.get("output_filename")
        if not filename or not isinstance(filename, str):
            raise InvalidMessage(
                "JSONLines step parameter 'output_filename' must name a file, "
                f"not {short_repr(filename)}"
            )
        line = json.dumps(
            selected(payload, _key_list(parameters, "include"), _key_list(parameters, "exclude"))
        )
        path = Path(filename)
        try:
            append_line(path, (line + "\n").encode())
        except OSError as error:
            raise LineNotWritten(f"cannot write to {path}: {error}") from error
