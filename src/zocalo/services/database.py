"""The SQL database a shipped service keeps its state or results in, and how it outlives an outage.

Both ``Join`` and the database writer reach their database through SQLAlchemy 2:
a SQLite file by default, any SQL URL (``postgresql+psycopg://...``,
``mysql+pymysql://...``) when given. When the database cannot be reached, the
message in hand must neither be lost nor burn the broker's delivery limit (a
redelivery counts towards it, an outage of an hour would dead-letter
everything): it is *put off* instead, sent back to its own step with a
delay that doubles with each wait (:meth:`Outage.put_off`), and acknowledged
in the same atomic publish. Meanwhile the service stays up, says in its status
that it waits for the database, and tries the database again only now and then
rather than once per message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import platformdirs

from zocalo.errors import ConfigurationError
from zocalo.service import Service
from zocalo.transport.dead_letters import without_broker_headers

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from zocalo.recipe.step import RecipeStep

#: How many times a message was put off while the database was unreachable.
WAITS_HEADER = "zocalo-db-waits"
#: The id of the message a put-off copy stands for (its first delivery's id), so that a
#: service recognises a message it had half handled before the database went away.
FIRST_ID_HEADER = "zocalo-first-message-id"
#: Seconds a connection attempt may take before the database counts as unreachable.
CONNECT_TIMEOUT = 5
#: Seconds SQLite waits for another writer of the same file before giving up.
SQLITE_BUSY_TIMEOUT = 30


def database_url(given: str | None, variable: str, configured: Any, filename: str) -> str:
    """The database to use: ``given``, else ``$variable``, else ``configured`` (the site
    configuration's ``storage`` key of the service), else a SQLite file ``filename`` in
    the user's data directory (beside the embedded broker)."""
    for candidate in (given, os.environ.get(variable), configured):
        if candidate:
            return str(candidate)
    directory = Path(platformdirs.user_data_dir("zocalo", appauthor=False))
    return f"sqlite:///{directory / filename}"


def create_database_engine(url: str) -> Engine:
    """An engine for ``url``; a URL that names no usable database is one clear line.

    SQLite: the file's directory is created, WAL mode, and every transaction begins
    with ``BEGIN IMMEDIATE`` so that two processes never deadlock upgrading a read
    lock. Other databases: READ COMMITTED (no gap locks on MariaDB), connections
    checked before use, and a short connect timeout so that an outage is noticed.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"not a database URL: {_hide_password(url)!r}") from None
    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(
                parsed,
                pool_pre_ping=True,
                isolation_level="READ COMMITTED",
                connect_args=_connect_timeout(parsed.get_driver_name()),
            )
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
    except (NoSuchModuleError, ImportError) as error:
        raise ConfigurationError(
            f"cannot use database {parsed.render_as_string(hide_password=True)}: {error} "
            "(is its driver installed?)"
        ) from None

    @event.listens_for(engine, "connect")
    def _setup(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we say BEGIN ourselves, below
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _connect_timeout(driver: str) -> dict[str, Any]:
    if driver in ("psycopg", "psycopg2", "pymysql", "mysqldb"):
        return {"connect_timeout": CONNECT_TIMEOUT}
    return {}


def _hide_password(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{separator}{credentials.partition(':')[0]}:***@{host}"


def describe(engine: Engine) -> str:
    """The engine's URL for log lines, password hidden."""
    return engine.url.render_as_string(hide_password=True)


def long_text() -> Any:
    """A text column type without MariaDB's 64 KiB limit on ``TEXT``."""
    from sqlalchemy import Text
    from sqlalchemy.dialects.mysql import LONGTEXT

    return Text().with_variant(LONGTEXT(), "mysql", "mariadb")


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached now (waiting helps), rather
    than that this statement is wrong (no such table: waiting does not help)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:  # the driver says the connection broke
        return True
    if isinstance(error, OperationalError | InterfaceError) and error.statement is None:
        return True  # raised while connecting
    return "database is locked" in str(error.orig)  # SQLite: another writer held on too long


def message_identity(step: RecipeStep) -> str:
    """The id of the message in hand, the same for a put-off copy as for its original."""
    return str(step.headers.get(FIRST_ID_HEADER) or step.message_id)


class Outage:
    """Whether the database is reachable, and what to do with messages while it is not.

    Each put-off message comes back after ``first_wait`` seconds, then twice that,
    and so on up to ``max_wait``: the backlog costs the broker little while the
    database stays down, and drains within ``max_wait`` of its return. The database
    is tried again at most once per probe interval (growing the same way), whatever
    the number of messages, so a down database is not hammered.
    """

    def __init__(
        self, what: str, log: logging.Logger, first_wait: float = 1.0, max_wait: float = 30.0
    ) -> None:
        self.what = what
        self.log = log
        self.first_wait = first_wait
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._since: float | None = None  # time.time() the outage was noticed
        self._probe_at = 0.0  # time.monotonic() of the next attempt while down
        self._probes = 0
        self._put_off = 0
        self._last_error = ""

    @property
    def down(self) -> bool:
        return self._since is not None

    def may_try(self) -> bool:
        """Whether to try the database with the message in hand (always, unless it is down
        and the next probe is not due: then the message is put off at once)."""
        with self._lock:
            if self._since is None:
                return True
            now = time.monotonic()
            if now < self._probe_at:
                return False
            self._probes += 1
            self._probe_at = now + self._wait(self._probes)
            return True

    def failed(self, error: BaseException) -> None:
        """The database could not be reached (logged once per outage, not per message)."""
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        with self._lock:
            self._last_error = reason
            if self._since is not None:
                return
            self._since = time.time()
            self._probes = 0
            self._probe_at = time.monotonic() + self.first_wait
        self.log.warning(
            "cannot reach %s (%s); messages wait and are tried again with a growing delay",
            self.what,
            reason,
        )

    def recovered(self) -> None:
        """The database answered: messages go straight through again."""
        with self._lock:
            if self._since is None:
                return
            lasted, put_off = time.time() - self._since, self._put_off
            self._since, self._put_off = None, 0
        self.log.info(
            "%s is reachable again after %.1f s; %d messages were put off meanwhile",
            self.what,
            lasted,
            put_off,
        )

    def put_off(self, step: RecipeStep, payload: Any) -> float:
        """Send the message in hand back to its own step after a growing delay; the
        delay in seconds. Whatever the handler sent meanwhile is dropped."""
        step.outputs.clear()
        waits = _int(step.headers.get(WAITS_HEADER)) + 1
        delay = self._wait(waits)
        headers = without_broker_headers(step.headers)
        headers[WAITS_HEADER] = waits
        headers[FIRST_ID_HEADER] = message_identity(step)
        step.checkpoint(payload, delay=delay, headers=headers)
        with self._lock:
            self._put_off += 1
        self.log.debug("put off for %.1f s (wait %d): %s unreachable", delay, waits, self.what)
        return delay

    def note(self) -> str | None:
        """For the status broadcast: what the service waits for, or None."""
        with self._lock:
            if self._since is None:
                return None
            since = time.strftime("%H:%M:%S", time.localtime(self._since))
            return f"waiting for the database {self.what} since {since}: {self._last_error}"

    def _wait(self, count: int) -> float:
        doublings: int = min(max(count - 1, 0), 30)
        return min(self.first_wait * float(2**doublings), self.max_wait)


def _int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


class DatabaseService(Service):
    """A service whose work lives in one SQL database, and waits out its outages.

    A subclass names where its database is configured (``storage_key``, the
    environment ``database_variable``, a ``default_file`` beside the broker) and
    what it does there (``purpose``, for the start line); this class opens the
    engine, reports the outage in the service's status and closes the engine.
    """

    storage_key: ClassVar[str]
    database_variable: ClassVar[str]
    default_file: ClassVar[str]
    purpose: ClassVar[str]
    #: Seconds a message waits while the database is unreachable: at first, at most.
    first_wait = 1.0
    max_wait = 30.0

    def __init__(
        self, environment: dict[str, Any] | None = None, *, database: str | None = None
    ) -> None:
        super().__init__(environment)
        self.given_database = database
        self.url = ""
        self.engine: Engine | None = None
        self.outage: Outage | None = None
        self.counts: Counter[str] = Counter()

    def initializing(self) -> None:
        configured = self.site_config.storage.get(self.storage_key)
        self.url = database_url(
            self.given_database, self.database_variable, configured, self.default_file
        )
        self.engine = create_database_engine(self.url)
        self.outage = Outage(describe(self.engine), self.log, self.first_wait, self.max_wait)
        self.log.info("%s %s", self.purpose, describe(self.engine))

    def stopping(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def status_note(self) -> str | None:
        return self.outage.note() if self.outage is not None else None
