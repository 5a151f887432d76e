"""Join: the fan-in step. It collects the parts of one collection and sends them on as one.

A recipe step on queue ``zocalo.join``; only its ``parameters`` say what to do::

    "4": {"service": "Join", "queue": "zocalo.join",
          "parameters": {"key": "{dcid}", "expected": "{images}", "index": "image",
                         "timeout": 600},
          "output": {"complete": 5, "timeout": 6}}

``key``
    names the collection (default: the recipe ID and this step). Parts of several
    recipes join when their steps name the same key.
``expected`` / ``expected_from``
    how many parts make the collection whole: a number, or the payload field of
    the parts that carries it.
``index``
    a payload field that numbers the parts: they are sent in its order, and two
    parts with the same index are one part (a redelivery, or an upstream service
    that ran twice). Without it, each message is a part and a redelivered
    message is recognised by its message id (give ``index`` when the senders set
    no message id: python-workflows does not, and a broker's stand-in id is not
    stable across deliveries on every transport).
``timeout``
    seconds from the first part (default 3600). Then what has arrived goes to the
    ``timeout`` output channel, else the ``error`` channel, else the recipe's
    top-level ``error`` steps, with ``"complete": false``.
``keep``
    seconds a sent collection is remembered (default 86400), so that a late copy of
    one of its parts is dropped rather than starting it again; a part from a recipe
    that took no part in it starts the collection afresh (the same data collection
    processed again).

A whole collection goes to the step's output (its ``complete`` channel, if the
output has named channels) as ``{"key", "complete", "expected", "received", "parts"}``.

Safety: every part is recorded (a unique ``(key, part)`` row) and the collection's
state changed in one database transaction, committed before the handler returns;
the runner acknowledges the part only after that, together with the publish of
whatever the part caused (one atomic broker operation). So a crash at any point
loses nothing and counts nothing twice, and the collection fires once: the
message whose transaction closed it is remembered (``closed_by``), and only that
message, delivered again because its publish never happened, sends the result
again. (On RabbitMQ a crash between the broker's confirm and the ack can still
deliver one result twice: the outputs carry ``zocalo-join-key`` for consumers that
must know.) The timer is a delayed message to this same step, published
atomically with the acknowledgement of the first part: durable like any message,
wherever the service runs, and needing no thread nor clock of its own.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zocalo.errors import InvalidMessage
from zocalo.service import handler
from zocalo.services.database import (
    DatabaseService,
    is_unreachable,
    long_text,
    message_identity,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Row

    from zocalo.recipe.step import RecipeStep

QUEUE = "zocalo.join"
#: Marks this service's own messages to itself: ``deadline`` or ``forget``.
CONTROL_HEADER = "zocalo-join"
#: Carried by every collection the service sends on.
KEY_HEADER = "zocalo-join-key"
#: Where a whole collection goes when the step's output has named channels.
COMPLETE_CHANNEL = "complete"
#: The site configuration's ``storage`` key naming the database (after the variable).
STORAGE_KEY = "zocalo.join.database"
DATABASE_VARIABLE = "ZOCALO_JOIN_DATABASE"
DEFAULT_TIMEOUT = 3600.0
DEFAULT_KEEP = 86400.0
#: Longest key or part identity (a primary key column everywhere, MariaDB included).
MAX_NAME = 255

OPEN, COMPLETE, TIMED_OUT = "open", "complete", "timed out"


class JoinError(InvalidMessage):
    """A Join step whose parameters, or a part whose payload, cannot be used (the part goes
    to the dead-letter queue at once: retrying cannot help)."""


@dataclass(frozen=True)
class JoinSettings:
    """What one Join step's parameters ask for."""

    key: str
    expected: int | None
    expected_from: str | None
    index: str | None
    timeout: float
    keep: float

    @classmethod
    def of(cls, step: RecipeStep) -> JoinSettings:
        given = step.parameters
        key = given.get("key")
        if key is None or key == "":
            key = f"{step.recipe_id}:{step.pointer}"
        if not isinstance(key, str | int) or isinstance(key, bool) or len(str(key)) > MAX_NAME:
            raise JoinError(f"Join key must be a string of at most {MAX_NAME} characters: {key!r}")
        expected = given.get("expected")
        expected_from = given.get("expected_from")
        if (expected is None) == (expected_from is None):
            raise JoinError("a Join step needs one of the parameters 'expected' or 'expected_from'")
        if expected_from is not None and not isinstance(expected_from, str):
            raise JoinError(f"Join 'expected_from' must name a payload field: {expected_from!r}")
        index = given.get("index")
        if index is not None and not isinstance(index, str):
            raise JoinError(f"Join 'index' must name a payload field: {index!r}")
        return cls(
            key=str(key),
            expected=None if expected is None else _count(expected, "expected"),
            expected_from=expected_from,
            index=index,
            timeout=_seconds(given.get("timeout", DEFAULT_TIMEOUT), "timeout"),
            keep=_seconds(given.get("keep", DEFAULT_KEEP), "keep"),
        )


def _count(value: Any, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise JoinError(f"Join {what!r} must be a whole number of parts, at least 1: {value!r}")
    return number


def _seconds(value: Any, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise JoinError(f"Join {what!r} must be a positive number of seconds: {value!r}")
    return seconds


def _tables() -> tuple[Any, Any, Any]:
    """The schema (built on first use: SQLAlchemy loads only in the worker)."""
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table

    metadata = MetaData()
    collections = Table(
        "zocalo_join_collections",
        metadata,
        Column("key", String(MAX_NAME), primary_key=True),
        Column("state", String(16), nullable=False),
        Column("expected", Integer),
        Column("opened_at", Float, nullable=False),
        Column("opened_by", String(MAX_NAME), nullable=False),
        #: The recipe IDs whose parts it holds (JSON): their late parts are dropped.
        Column("recipes", long_text(), nullable=False),
        Column("closed_at", Float),
        Column("closed_by", String(MAX_NAME)),
        #: What was sent (JSON), to send it again if the closing message returns.
        Column("result", long_text()),
    )
    parts = Table(
        "zocalo_join_parts",
        metadata,
        Column("key", String(MAX_NAME), primary_key=True),
        Column("part", String(MAX_NAME), primary_key=True),
        Column("position", long_text()),
        Column("arrived_at", Float, nullable=False),
        Column("payload", long_text(), nullable=False),
    )
    return metadata, collections, parts


class Join(DatabaseService):
    """Collects the parts of each collection in a SQL database; sends each collection once."""

    storage_key = STORAGE_KEY
    database_variable = DATABASE_VARIABLE
    default_file = "join.db"
    purpose = "collecting parts in"
    #: Attempts at one transaction that lost a race with another Join instance.
    attempts = 5

    def __init__(
        self, environment: dict[str, Any] | None = None, *, database: str | None = None
    ) -> None:
        super().__init__(environment, database=database)
        self._schema_ready = False
        self._metadata, self._collections, self._parts = _tables()

    # -- the handler -----------------------------------------------------------
    @handler(QUEUE, prefetch=20)
    def collect(self, step: RecipeStep, payload: Any) -> None:
        assert self.engine is not None and self.outage is not None, "initializing() first"
        settings = JoinSettings.of(step)
        kind = step.headers.get(CONTROL_HEADER)
        if not self.outage.may_try():
            self.outage.put_off(step, payload)
            return
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError

        try:
            if not self._schema_ready:
                self._metadata.create_all(self.engine)
                self._schema_ready = True
            for attempt in range(1, self.attempts + 1):
                step.outputs.clear()
                try:
                    with self.engine.begin() as db:
                        self._act(db, kind, step, payload, settings)
                    break
                except IntegrityError:  # another instance opened the collection first
                    if attempt == self.attempts:
                        raise
        except SQLAlchemyError as error:
            if not is_unreachable(error):
                raise
            self.outage.failed(error)
            self.outage.put_off(step, payload)
            return
        self.outage.recovered()

    def _act(
        self, db: Connection, kind: Any, step: RecipeStep, payload: Any, settings: JoinSettings
    ) -> None:
        if kind is None:
            self._part(db, step, payload, settings)
        elif kind == "deadline":
            self._deadline(db, step, payload, settings)
        elif kind == "forget":
            self._forget(db, payload)
        else:
            raise JoinError(f"unknown {CONTROL_HEADER} message {kind!r}")

    # -- a part ------------------------------------------------------------------
    def _part(self, db: Connection, step: RecipeStep, payload: Any, settings: JoinSettings) -> None:
        identity = message_identity(step)
        part, position = self._identify(payload, settings, identity)
        recipe = str(step.recipe_id)
        row = self._locked(db, settings.key)
        if row is not None and row.state != OPEN:
            if row.closed_by == identity:  # the closing message again: its publish never happened
                self.log.info("collection %s: sending it again (its last part came again)", row.key)
                self._send_result(step, row.state, json.loads(row.result), row.closed_by, settings)
                return
            if recipe in json.loads(row.recipes):
                self.counts["late"] += 1
                self.log.info("collection %s was sent already: part %s dropped", settings.key, part)
                return
            db.execute(self._collections.delete().where(self._collections.c.key == settings.key))
            self.log.info("collection %s starts again, for recipe %s", settings.key, recipe)
            row = None
        if row is None:
            row = self._open(db, step, settings, identity, recipe)
        elif row.opened_by == identity and self._has_part(db, settings.key, part):
            # The first part again: the deadline published with its ack may be missing.
            self._send_deadline(step, settings, row.opened_by, row.opened_at + settings.timeout)
        if self._has_part(db, settings.key, part):
            self.counts["duplicates"] += 1
            self.log.info("collection %s: part %s is here already", settings.key, part)
            return
        db.execute(
            self._parts.insert().values(
                key=settings.key,
                part=part,
                position=None if position is None else json.dumps(position),
                arrived_at=time.time(),
                payload=json.dumps(payload),
            )
        )
        row = self._note_part(db, row, payload, settings, recipe)
        (received,) = db.execute(self._count_parts(settings.key)).one()
        if row.expected is not None and received >= row.expected:
            self._close(db, step, settings, COMPLETE, identity)

    def _identify(self, payload: Any, settings: JoinSettings, identity: str) -> tuple[str, Any]:
        """The part's identity, and its position in the output (None: arrival order)."""
        if settings.index is None:
            return identity, None
        if not isinstance(payload, dict) or settings.index not in payload:
            raise JoinError(f"a part of Join {settings.key} has no index field {settings.index!r}")
        position = payload[settings.index]
        part = json.dumps(position, sort_keys=True)
        if len(part) > MAX_NAME:
            raise JoinError(f"the index of a part of Join {settings.key} is too long: {part[:40]}")
        return part, position

    def _locked(self, db: Connection, key: str) -> Row[Any] | None:
        table = self._collections
        return db.execute(table.select().where(table.c.key == key).with_for_update()).first()

    def _has_part(self, db: Connection, key: str, part: str) -> bool:
        table = self._parts
        found = db.execute(
            table.select().where(table.c.key == key, table.c.part == part).limit(1)
        ).first()
        return found is not None

    def _count_parts(self, key: str) -> Any:
        from sqlalchemy import func, select

        return select(func.count()).select_from(self._parts).where(self._parts.c.key == key)

    def _open(
        self, db: Connection, step: RecipeStep, settings: JoinSettings, identity: str, recipe: str
    ) -> Row[Any]:
        now = time.time()
        db.execute(
            self._collections.insert().values(
                key=settings.key,
                state=OPEN,
                expected=settings.expected,
                opened_at=now,
                opened_by=identity,
                recipes=json.dumps([recipe]),
            )
        )
        self.counts["opened"] += 1
        self._send_deadline(step, settings, identity, now + settings.timeout)
        row = self._locked(db, settings.key)
        assert row is not None
        return row

    def _note_part(
        self, db: Connection, row: Row[Any], payload: Any, settings: JoinSettings, recipe: str
    ) -> Row[Any]:
        """Remember the part's recipe, and the count it brings when the count is its field."""
        changes: dict[str, Any] = {}
        recipes = json.loads(row.recipes)
        if recipe not in recipes:
            changes["recipes"] = json.dumps([*recipes, recipe])
        if settings.expected_from is not None and isinstance(payload, dict):
            given = payload.get(settings.expected_from)
            if given is not None:
                expected = _count(given, settings.expected_from)
                if row.expected is None:
                    changes["expected"] = expected
                elif expected != row.expected:
                    self.log.warning(
                        "collection %s: a part says %d parts, an earlier one %d; keeping %d",
                        row.key,
                        expected,
                        row.expected,
                        row.expected,
                    )
        if not changes:
            return row
        table = self._collections
        db.execute(table.update().where(table.c.key == row.key).values(**changes))
        updated = self._locked(db, row.key)
        assert updated is not None
        return updated

    # -- closing -------------------------------------------------------------------
    def _close(
        self, db: Connection, step: RecipeStep, settings: JoinSettings, state: str, identity: str
    ) -> None:
        """Mark the collection sent, move its parts into the result, and send it."""
        row = self._locked(db, settings.key)
        assert row is not None
        table = self._parts
        stored = db.execute(
            table.select().where(table.c.key == settings.key).order_by(table.c.arrived_at)
        ).all()
        ordered = sorted(stored, key=_order) if settings.index is not None else stored
        result = {
            "key": settings.key,
            "complete": state == COMPLETE,
            "expected": row.expected,
            "received": len(ordered),
            "parts": [json.loads(part.payload) for part in ordered],
        }
        collections = self._collections
        db.execute(
            collections.update()
            .where(collections.c.key == settings.key)
            .values(
                state=state, closed_at=time.time(), closed_by=identity, result=json.dumps(result)
            )
        )
        db.execute(table.delete().where(table.c.key == settings.key))
        self.counts[state] += 1
        if state == COMPLETE:
            self.log.info("collection %s complete: %d parts", settings.key, len(ordered))
        else:
            self.log.warning(
                "collection %s timed out after %g s with %d of %s parts",
                settings.key,
                settings.timeout,
                len(ordered),
                row.expected if row.expected is not None else "an unknown number of",
            )
        self._send_result(step, state, result, identity, settings)

    def _send_result(
        self, step: RecipeStep, state: str, result: Any, closed_by: str, settings: JoinSettings
    ) -> None:
        headers = {KEY_HEADER: settings.key}
        if state == COMPLETE:
            step.set_default_channel(COMPLETE_CHANNEL)  # for an output of named channels
            step.send(result, headers=headers)
        else:
            _send_timed_out(step, result, headers)
        forget = {"key": settings.key, "closed_by": closed_by}
        step.checkpoint(forget, delay=settings.keep, headers={CONTROL_HEADER: "forget"})

    # -- this service's own messages -------------------------------------------------
    def _send_deadline(
        self, step: RecipeStep, settings: JoinSettings, opened_by: str, at: float
    ) -> None:
        deadline = {"key": settings.key, "opened_by": opened_by}
        delay = max(at - time.time(), 0.001)
        step.checkpoint(deadline, delay=delay, headers={CONTROL_HEADER: "deadline"})

    def _deadline(
        self, db: Connection, step: RecipeStep, payload: Any, settings: JoinSettings
    ) -> None:
        key, opened_by = _control_fields(payload, "opened_by")
        row = self._locked(db, key)
        if row is None or row.opened_by != opened_by:
            return  # sent and forgotten already, or another collection of the same key now
        identity = message_identity(step)
        if row.state != OPEN:
            if row.closed_by == identity:  # this deadline closed it; its publish never happened
                self._send_result(step, row.state, json.loads(row.result), identity, settings)
            return
        self._close(db, step, _with_key(settings, key), TIMED_OUT, identity)

    def _forget(self, db: Connection, payload: Any) -> None:
        key, closed_by = _control_fields(payload, "closed_by")
        table = self._collections
        db.execute(
            table.delete().where(
                table.c.key == key, table.c.state != OPEN, table.c.closed_by == closed_by
            )
        )
        self._parts_of_nobody(db, key)

    def _parts_of_nobody(self, db: Connection, key: str) -> None:
        """Parts left behind by a collection that is gone (none, unless edited by hand)."""
        if self._locked(db, key) is None:
            db.execute(self._parts.delete().where(self._parts.c.key == key))


def _send_timed_out(step: RecipeStep, result: Any, headers: dict[str, Any]) -> None:
    """The ``timeout`` channel, else ``error``, else the recipe's error steps."""
    output = step.step.get("output")
    channels = output if isinstance(output, dict) else {}
    if "timeout" not in channels and "error" in channels:
        step.send_to("error", result, headers=headers)
    elif "timeout" not in channels and step.recipe is not None and step.recipe.error:
        step.send_to_error(result, headers=headers)
    else:
        step.send_to("timeout", result, headers=headers)  # logged and counted if it has none


def _control_fields(payload: Any, field: str) -> tuple[str, str]:
    if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
        raise JoinError(f"a {CONTROL_HEADER} message without its key: {payload!r}")
    return payload["key"], str(payload.get(field))


def _with_key(settings: JoinSettings, key: str) -> JoinSettings:
    from dataclasses import replace

    return replace(settings, key=key)


def _order(part: Row[Any]) -> tuple[int, Any, float]:
    """Numbers in numeric order, then everything else by its JSON text."""
    position = json.loads(part.position) if part.position is not None else None
    if isinstance(position, int | float) and not isinstance(position, bool):
        return (0, position, part.arrived_at)
    return (1, part.position or "", part.arrived_at)
