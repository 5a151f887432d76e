"""Structured logging that follows one job across services.

The runner sets the recipe ID and step of the message in hand in context
variables; :class:`RecipeContextFilter` copies them onto every record, so
lines from any logger called inside a handler carry them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator

recipe_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "zocalo_recipe_id", default=None
)
recipe_step_var: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "zocalo_recipe_step", default=None
)


@contextlib.contextmanager
def recipe_context(recipe_id: str | None, step: int | None) -> Iterator[None]:
    """Within this block, log records carry ``recipe_ID`` and ``recipe_step``."""
    id_token = recipe_id_var.set(recipe_id)
    step_token = recipe_step_var.set(step)
    try:
        yield
    finally:
        recipe_id_var.reset(id_token)
        recipe_step_var.reset(step_token)


class RecipeContextFilter(logging.Filter):
    """Adds ``recipe_ID`` and ``recipe_step`` (the reference's field name) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "recipe_ID"):
            record.recipe_ID = recipe_id_var.get()
        if not hasattr(record, "recipe_step"):
            record.recipe_step = recipe_step_var.get()
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, recipe fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "recipe_ID": getattr(record, "recipe_ID", None),
            "recipe_step": getattr(record, "recipe_step", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(recipe_ID)s:%(recipe_step)s] %(message)s"


def setup_logging(level: int = logging.INFO, fmt: str = "text") -> None:
    """Console logging for command-line tools, with the recipe context on every line."""
    stream = logging.StreamHandler()
    stream.addFilter(RecipeContextFilter())
    stream.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [stream]
    root.setLevel(level)
