"""The database writer: one row per message, written once, whatever the database goes through.

A recipe step on queue ``zocalo.dbwriter`` (the role python-zocalo's ISPyB writer
plays); its ``parameters`` describe the row::

    "5": {"service": "DatabaseWriter", "queue": "zocalo.dbwriter",
          "parameters": {"table": "image_results",
                         "columns": {"image": "image", "spots": "result.spots"},
                         "values": {"dcid": "{dcid}"},
                         "key": "image"},
          "output": 6}

``table``
    an existing table of the database.
``columns``
    column name -> payload field (``a.b`` reaches into nested objects); a field
    holding an object or a list is written as JSON text.
``values``
    column name -> a value as it stands (typically a recipe parameter).
``key``
    the payload field that tells this step's rows apart (e.g. the image number);
    without it the step writes one row per recipe.

Writes are idempotent: the row's key is the recipe ID, the step and the client
key, recorded in ``zocalo_writes`` (its primary key) in the same transaction as
the row, so a redelivered message never writes a second row. The payload then
goes on to the step's output (after a redelivery too: the next step may not have
had it yet).

When the database cannot be reached, messages wait with a growing delay
(:class:`~zocalo.services.database.Outage`): the service stays up, its status says
that it waits for the database, and the backlog drains when the database returns.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zocalo.errors import InvalidMessage, ZocaloError
from zocalo.service import handler
from zocalo.services.database import (
    DatabaseService,
    describe,
    is_unreachable,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

    from zocalo.recipe.step import RecipeStep

QUEUE = "zocalo.dbwriter"
#: The site configuration's ``storage`` key naming the database (after the variable).
STORAGE_KEY = "zocalo.dbwriter.database"
DATABASE_VARIABLE = "ZOCALO_DBWRITER_DATABASE"
#: The table that records every write by its key.
LEDGER = "zocalo_writes"


class WriteError(InvalidMessage):
    """A step whose parameters, or a payload, describe no row this database can take (the
    message goes to the dead-letter queue at once: retrying cannot help)."""


@dataclass(frozen=True)
class RowSpec:
    """What one writer step's parameters ask for."""

    table: str
    columns: Mapping[str, str]
    values: Mapping[str, Any]
    key: str | None

    @classmethod
    def of(cls, step: RecipeStep) -> RowSpec:
        given = step.parameters
        table = given.get("table")
        if not isinstance(table, str) or not table:
            raise WriteError(f"a DatabaseWriter step needs the parameter 'table': {table!r}")
        columns = given.get("columns") or {}
        values = given.get("values") or {}
        if not isinstance(columns, dict) or not all(isinstance(f, str) for f in columns.values()):
            raise WriteError(f"'columns' must map column names to payload fields: {columns!r}")
        if not isinstance(values, dict):
            raise WriteError(f"'values' must map column names to values: {values!r}")
        if not columns and not values:
            raise WriteError(f"a DatabaseWriter step for {table!r} names no columns to write")
        key = given.get("key")
        if key is not None and not isinstance(key, str):
            raise WriteError(f"'key' must name a payload field: {key!r}")
        return cls(table, columns, values, key)

    def row(self, payload: Any) -> dict[str, Any]:
        """The column values for ``payload``."""
        row = {column: _stored(value) for column, value in self.values.items()}
        for column, field in self.columns.items():
            row[column] = _stored(_field(payload, field, self.table))
        return row

    def client_key(self, payload: Any) -> str:
        if self.key is None:
            return ""
        return json.dumps(_field(payload, self.key, self.table), sort_keys=True)


def _field(payload: Any, path: str, table: str) -> Any:
    value = payload
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            raise WriteError(f"the payload for table {table!r} has no field {path!r}")
        value = value[name]
    return value


def _stored(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def write_key(recipe_id: str | None, step: int | None, client_key: str) -> str:
    """The row's idempotency key: a digest, as the client key may be long."""
    text = json.dumps([recipe_id, step, client_key])
    return hashlib.sha256(text.encode()).hexdigest()


class _LostRace(ZocaloError):
    """Another writer recorded the same key first: try the transaction again."""


class DatabaseWriter(DatabaseService):
    """Writes one row per message through SQLAlchemy; each row once."""

    storage_key = STORAGE_KEY
    database_variable = DATABASE_VARIABLE
    default_file = "results.db"
    purpose = "writing rows to"
    #: Attempts at one write that lost a race with another writer for the same key.
    attempts = 3

    def __init__(
        self, environment: dict[str, Any] | None = None, *, database: str | None = None
    ) -> None:
        super().__init__(environment, database=database)
        self._tables: dict[str, Table] = {}
        self._ledger: Table | None = None

    # -- the handler -----------------------------------------------------------
    @handler(QUEUE, prefetch=20)
    def write(self, step: RecipeStep, payload: Any) -> None:
        assert self.engine is not None and self.outage is not None, "initializing() first"
        spec = RowSpec.of(step)
        row = spec.row(payload)
        key = write_key(step.recipe_id, step.pointer, spec.client_key(payload))
        if not self.outage.may_try():
            self.outage.put_off(step, payload)
            return
        from sqlalchemy.exc import SQLAlchemyError

        try:
            written = self._write(spec, row, key, step)
        except SQLAlchemyError as error:
            if not is_unreachable(error):
                raise
            self.outage.failed(error)
            self.outage.put_off(step, payload)
            return
        self.outage.recovered()
        self.counts["written" if written else "duplicates"] += 1
        if not written:
            self.log.info("row for %s was written before: not again", spec.table)
        step.send(payload)

    def _write(self, spec: RowSpec, row: dict[str, Any], key: str, step: RecipeStep) -> bool:
        """Write the row unless its key is recorded; whether it was written now."""
        assert self.engine is not None
        for attempt in range(1, self.attempts + 1):
            try:
                with self.engine.begin() as db:
                    ledger = self._ledger_table(db)
                    found = db.execute(ledger.select().where(ledger.c.key == key)).first()
                    if found is not None:
                        return False
                    self._record(db, ledger, key, spec, step)
                    db.execute(self._table(db, spec, row).insert().values(**row))
                    return True
            except _LostRace:
                if attempt == self.attempts:
                    raise WriteError(f"lost {attempt} races to write row {key}") from None
        raise AssertionError("unreachable")

    def _record(
        self, db: Connection, ledger: Table, key: str, spec: RowSpec, step: RecipeStep
    ) -> None:
        from sqlalchemy.exc import IntegrityError

        try:
            db.execute(
                ledger.insert().values(
                    key=key,
                    table_name=spec.table,
                    recipe_id=str(step.recipe_id),
                    step=step.pointer,
                    written_at=time.time(),
                )
            )
        except IntegrityError:
            raise _LostRace from None

    def _ledger_table(self, db: Connection) -> Table:
        if self._ledger is None:
            from sqlalchemy import Column, Float, Integer, MetaData, String, Table

            ledger = Table(
                LEDGER,
                MetaData(),
                Column("key", String(64), primary_key=True),
                Column("table_name", String(255), nullable=False),
                Column("recipe_id", String(255), nullable=False),
                Column("step", Integer),
                Column("written_at", Float, nullable=False),
            )
            ledger.create(db, checkfirst=True)
            self._ledger = ledger
        return self._ledger

    def _table(self, db: Connection, spec: RowSpec, row: dict[str, Any]) -> Table:
        """The table, read from the database once; refuses columns it does not have."""
        table = self._tables.get(spec.table)
        if table is None:
            from sqlalchemy import MetaData, Table
            from sqlalchemy.exc import NoSuchTableError

            try:
                table = Table(spec.table, MetaData(), autoload_with=db)
            except NoSuchTableError:
                raise WriteError(
                    f"no table {spec.table!r} in {describe(db.engine)}: create it first"
                ) from None
            self._tables[spec.table] = table
        unknown = sorted(set(row) - set(table.c.keys()))
        if unknown:
            raise WriteError(f"table {spec.table!r} has no column {', '.join(map(repr, unknown))}")
        return table
