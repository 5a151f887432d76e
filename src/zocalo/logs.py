"""Structured logging that follows one job across services.

The runner sets the recipe ID and step of the message in hand in context
variables; :class:`RecipeContextFilter` copies them onto every record, so
lines from any logger called inside a handler carry them. The filter sits on
every *handler* (not on loggers), so it sees records from module-level loggers
too: a logger's own filters only see records logged to that very logger.

:func:`setup_logging` is the entry point for programs: console output as text
or JSON, plus the site configuration's ``logging`` (a dictConfig) and
``graylog`` (a GELF endpoint, fed through a bounded queue) plugins. It is
:func:`logging_plan` (read the configuration) then :func:`apply_logging`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zocalo.config import SiteConfiguration

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

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "recipe_ID": getattr(record, "recipe_ID", None),
            "recipe_step": getattr(record, "recipe_step", None),
        }
        if self.service:
            entry["service"] = self.service
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=repr)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(recipe_ID)s:%(recipe_step)s] %(message)s"

#: Marks the handlers setup_logging installed, so a second call replaces them.
_OWNED = "_zocalo_setup_logging"


#: Libraries kept at WARNING unless the program runs at :data:`LIBRARY_DEBUG_VERBOSITY`
#: (a site ``logging`` plugin may still set them otherwise).
CHATTY_LIBRARIES = ("pika", "stomp")
#: ``-v`` shows zocalo's DEBUG lines; ``-vv`` adds the broker clients' (pika narrates
#: every frame: at ``-v`` they would drown the lines about the service).
LIBRARY_DEBUG_VERBOSITY = 2


class LoggingSetup:
    """What :func:`setup_logging` installed. :meth:`close` removes it and flushes GELF."""

    def __init__(self, handlers: list[logging.Handler], gelf: logging.Handler | None) -> None:
        self.handlers = handlers
        #: The queue handler in front of the GELF handler, if a ``graylog`` plugin is set.
        self.gelf = gelf

    def close(self) -> None:
        """Detach this setup's handlers from the root logger and close them.

        Closing the GELF queue waits (boundedly) for queued records to be sent.
        """
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
            handler.close()
        self.handlers = []

    def __enter__(self) -> LoggingSetup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _writes_to_console(handler: logging.Handler) -> bool:
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in consoles


def _all_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    return [handler for logger in loggers for handler in list(logger.handlers)]


def add_context_filter(handler: logging.Handler) -> None:
    """Put a :class:`RecipeContextFilter` on ``handler`` unless it has one."""
    if not any(isinstance(f, RecipeContextFilter) for f in handler.filters):
        handler.addFilter(RecipeContextFilter())


def gelf_handler(
    graylog: Any, service_name: str | None = None, *, maxsize: int = 10_000
) -> logging.Handler:
    """A GELF handler behind a non-blocking bounded queue.

    ``graylog`` is the ``graylog`` plugin, or its ``(protocol, host, port)``.
    """
    from zocalo.log_handlers import GELFTCPHandler, GELFUDPHandler, NonBlockingHandler

    if isinstance(graylog, (tuple, list)):
        protocol, host, port = graylog
    else:
        protocol, host, port = graylog.protocol, graylog.host, graylog.port
    target: logging.Handler
    if protocol == "TCP":
        target = GELFTCPHandler(host, port, service=service_name)
    else:
        target = GELFUDPHandler(host, port, service=service_name)
    add_context_filter(target)
    handler = NonBlockingHandler(target, maxsize=maxsize)
    add_context_filter(handler)
    return handler


class LoggingPlan:
    """What :func:`setup_logging` installs, as plain JSON-able data.

    Reading the site configuration takes YAML and pydantic; a supervisor and its
    forked services apply a plan made once by the command line instead, and
    stay small. ``graylog`` is ``(protocol, host, port)``.
    """

    def __init__(
        self,
        level: int = logging.INFO,
        fmt: str = "text",
        service_name: str | None = None,
        dict_configs: list[dict[str, Any]] | None = None,
        graylog: tuple[str, str, int] | None = None,
        verbosity: int = 0,
    ) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format {fmt!r}: expected 'text' or 'json'")
        self.level = level
        self.fmt = fmt
        self.service_name = service_name
        self.dict_configs = dict_configs or []
        self.graylog = tuple(graylog) if graylog else None
        #: The number of ``-v`` given.
        self.verbosity = verbosity

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoggingPlan:
        return cls(**data)


def logging_plan(
    level: int = logging.INFO,
    fmt: str = "text",
    site_config: SiteConfiguration | None = None,
    service_name: str | None = None,
    *,
    verbosity: int = 0,
) -> LoggingPlan:
    """The plan for ``level``, ``fmt`` and the site configuration's logging plugins."""
    plugins = site_config.plugins if site_config is not None else {}
    dict_configs: list[dict[str, Any]] = []
    graylog = None
    if plugins:  # the schemas (pydantic) only when a site file configured something
        from zocalo.config.plugins import GraylogConfig, LoggingConfig

        site_logging = plugins.get("logging")
        if isinstance(site_logging, LoggingConfig):
            dict_configs = site_logging.dict_config(verbosity)
        site_graylog = plugins.get("graylog")
        if isinstance(site_graylog, GraylogConfig):
            graylog = (site_graylog.protocol, site_graylog.host, site_graylog.port)
    return LoggingPlan(level, fmt, service_name, dict_configs, graylog, verbosity)


def setup_logging(
    level: int = logging.INFO,
    fmt: str = "text",
    site_config: SiteConfiguration | None = None,
    service_name: str | None = None,
    *,
    verbosity: int = 0,
) -> LoggingSetup:
    """Logging for programs, with the recipe context on every line of every handler.

    The same as ``apply_logging(logging_plan(...))``; see :func:`apply_logging`.
    Returns a :class:`LoggingSetup`; call its ``close()`` to flush and detach.
    """
    return apply_logging(logging_plan(level, fmt, site_config, service_name, verbosity=verbosity))


def apply_logging(plan: LoggingPlan) -> LoggingSetup:
    """Install ``plan``:

    1. The root logger gets the plan's level; handlers from an earlier call are removed;
       pika and stomp.py stay at WARNING below ``-vv`` (:data:`LIBRARY_DEBUG_VERBOSITY`).
    2. The site configuration's ``logging`` plugin, if any, is applied with
       :func:`logging.config.dictConfig` (plus ``verbosity`` of its ``verbose`` steps).
       It may set levels, including the root's, and add handlers.
    3. A console handler on stderr, formatted as ``text`` or ``json``, unless the
       ``logging`` plugin already put a console StreamHandler on the root logger.
    4. If the site configuration has a ``graylog`` plugin: a GELF handler (UDP or TCP)
       behind a bounded queue, so a slow endpoint never slows the caller.
    5. A :class:`RecipeContextFilter` on every handler of every logger.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(plan.level)
    for name in CHATTY_LIBRARIES:  # their INFO lines narrate every connection and channel
        logging.getLogger(name).setLevel(
            logging.DEBUG if plan.verbosity >= LIBRARY_DEBUG_VERBOSITY else logging.WARNING
        )
    if plan.dict_configs:
        from logging import config as logging_config  # only when a site file asks for it

        for step in plan.dict_configs:
            logging_config.dictConfig(step)

    installed: list[logging.Handler] = []
    if not any(_writes_to_console(handler) for handler in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(
            JSONFormatter(plan.service_name)
            if plan.fmt == "json"
            else logging.Formatter(TEXT_FORMAT)
        )
        installed.append(console)

    gelf = None
    if plan.graylog:
        gelf = gelf_handler(plan.graylog, plan.service_name)
        installed.append(gelf)

    for handler in installed:
        setattr(handler, _OWNED, True)
        root.addHandler(handler)
    for handler in _all_handlers():
        add_context_filter(handler)
    return LoggingSetup(installed, gelf)
