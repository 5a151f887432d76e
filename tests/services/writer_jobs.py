"""Rows for the database writer tests: a results table, and recipes whose step 1 writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, select

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.services.dbwriter import QUEUE
from zocalo.transport import Outgoing, Transport

WRITTEN = "written"


def results_table() -> Table:
    return Table(
        "results",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("dcid", Integer),
        Column("image", Integer),
        Column("spots", Integer),
        Column("summary", Text),
    )


def create_results_table(url: str) -> None:
    engine = create_engine(url)
    results_table().metadata.create_all(engine)
    engine.dispose()


def rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    table = results_table()
    with engine.connect() as connection:
        found = connection.execute(select(table).order_by(table.c.id)).mappings().all()
    engine.dispose()
    return [{k: v for k, v in row.items() if k != "id" and v is not None} for row in found]


def writes(parameters: dict[str, Any], payloads: list[Any]) -> list[Outgoing]:
    """One recipe whose step 1 writes, one message per payload."""
    recipe = {
        "1": {"service": "DatabaseWriter", "queue": QUEUE, "parameters": parameters, "output": 2},
        "2": {"queue": WRITTEN},
        "start": [[1, payload] for payload in payloads],
    }
    step = RecipeStep()
    step.start(Recipe(recipe))
    return step.outputs


def send(transport: Transport, messages: list[Outgoing]) -> None:
    transport.publish(messages).result(30)


PER_IMAGE = {
    "table": "results",
    "columns": {"image": "image", "spots": "result.spots"},
    "values": {"dcid": 42},
    "key": "image",
}
