"""JSONLines (``zocalo.service -s JSONLines``): each payload as one line of a file.

Compatible with python-zocalo's service: it consumes recipe messages on the
queue ``jsonlines``; the step's ``parameters`` say where and what::

    {"queue": "jsonlines", "parameters": {"output_filename": "/data/{guid}/results.jsonl",
                                          "include": ["image", "spots"], "exclude": []}}

``output_filename`` is required (parent directories are created). ``include``
keeps only the listed keys of an object payload, ``exclude`` then drops keys;
other payloads are written as they are. Each line is ``json.dumps(payload)``,
as the reference writes it.

Lines are written in batches, as the reference writes them: the handler keeps
each message (see :mod:`zocalo.service.kept`) and holds its line in a buffer
per file; once ``BATCH`` messages are kept, or a second passes without a new
one, or the service stops, each file gets its lines in one ``O_APPEND`` write,
then an ``fsync`` (about 8 ms a batch on a local disk: cheap per line), and
only then are that file's messages acknowledged, together. The prefetch is
``BATCH``, so a batch can fill: kept messages stay unacknowledged until then.

A batch that cannot be written (a full disk, a directory that cannot be
created) is cut back out of the file if nothing else was appended after it,
and its messages fail with the file and the reason, in one log line: none is
acked, each is tried again later, and after its last attempt it goes to
``dlq.jsonlines`` with that reason. A service killed between writing a batch
and its acknowledgement (``kill -9``) gets those messages again, so their
lines can be written twice; nothing acknowledged is ever missing from the file.

As the reference's, the queue is consumed exclusively (``@handler(...,
exclusive=True)``, see :meth:`zocalo.transport.base.Transport.subscribe`): one
JSONLines service writes at a time, so each file's lines keep the order in which
their messages were handled. A second one started beside it stands by, saying so in
one log line, and takes over when the first goes (stopped, crashed, its connection
lost), with what the first left unacknowledged; another line says when. Beside a
python-zocalo JSONLines holding the queue, ours stands by the same way. (Were two
ever to write at once, a batch is one ``O_APPEND`` write, so batches never mix on a
local filesystem.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zocalo.errors import InvalidMessage, ZocaloError
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.validation import short_repr
from zocalo.service import Service, handler
from zocalo.service.kept import Kept

QUEUE = "jsonlines"
#: Messages kept before their lines are written (the reference's 100); the prefetch.
BATCH = 100
#: Seconds without a new message before a partial batch is written (the reference's 1).
IDLE_SECONDS = 1.0
#: Seconds the oldest line of a batch may wait while messages keep arriving (each
#: within the idle second, so the idle flush never comes): ours, the reference has
#: none, and a trickle of one message every 0.9 s held its lines for 90 s.
MAX_WAIT_SECONDS = 5.0


class LinesNotWritten(ZocaloError):
    """A batch of lines could not be appended to its file; its messages are tried again."""


def selected(payload: Any, include: Sequence[str], exclude: Sequence[str]) -> Any:
    """``payload`` with only the ``include`` keys (if any), less the ``exclude`` keys."""
    if not isinstance(payload, dict):
        return payload
    if include:
        payload = {key: value for key, value in payload.items() if key in include}
    if exclude:
        payload = {key: value for key, value in payload.items() if key not in exclude}
    return payload


def append_lines(path: Path, lines: bytes) -> None:
    """Append ``lines`` to ``path`` with one ``O_APPEND`` write (creating file and
    directories) and ``fsync`` them; on failure, cut what was written back out unless
    something else was appended after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        start = os.fstat(descriptor).st_size
        written = 0
        try:
            while written < len(lines):
                written += os.write(descriptor, memoryview(lines)[written:])
            os.fsync(descriptor)
        except OSError:
            if written and os.fstat(descriptor).st_size == start + written:
                os.ftruncate(descriptor, start)  # no half-written line for the retry to follow
            raise
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
    """Writes every payload it receives as one JSON line of the step's ``output_filename``,
    in batches."""

    name = "JSONLines"
    flush_idle = IDLE_SECONDS
    max_wait = MAX_WAIT_SECONDS

    def __init__(self, environment: dict[str, Any] | None = None) -> None:
        super().__init__(environment)
        #: Per file, the lines not written yet and their kept messages, in arrival order.
        self._batches: dict[Path, list[tuple[bytes, Kept]]] = {}
        self._waiting = 0
        #: ``time.monotonic()`` when the oldest line waiting arrived.
        self._oldest = 0.0
        #: Writes made so far (one per file and batch), and the lines they carried.
        self.writes = 0
        self.lines_written = 0

    @handler(QUEUE, prefetch=BATCH, exclusive=True)
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
        kept = self.keep_message()
        self._batches.setdefault(Path(filename), []).append(((line + "\n").encode(), kept))
        if not self._waiting:
            self._oldest = time.monotonic()
        self._waiting += 1
        if self._waiting >= BATCH or time.monotonic() - self._oldest >= self.max_wait:
            self.flush_kept()

    def flush_kept(self) -> None:
        """Write each file's lines in one write, then settle its messages together."""
        batches, self._batches, self._waiting = self._batches, {}, 0
        for path, batch in batches.items():
            kept = [each for _, each in batch]
            try:
                append_lines(path, b"".join(line for line, _ in batch))
            except OSError as error:
                self.fail_kept(
                    kept, LinesNotWritten(f"cannot write {len(batch)} lines to {path}: {error}")
                )
                continue
            self.writes += 1
            self.lines_written += len(batch)
            self.settle_kept(kept)
