"""PostgreSQL and MariaDB servers of the tests' own, never the machine's shared ones.

Each server has a temporary directory of its own holding its data directory and
its Unix socket, and listens on no TCP port at all (so it can clash with no
other server, the machine's own on 5432/3306 included); PostgreSQL's socket is
named after a port number of its own. It runs as a non-root user (``nobody``
when the tests run as root: PostgreSQL refuses root, and MariaDB should), in a
process group of its own, which :meth:`PrivateServer.close` ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

#: How long a server may take to start or stop here (2 cores shared with other tests).
READY_WITHIN = 60.0


class ServerMissing(RuntimeError):
    """The server's programs are not installed where the tests look."""


def _run_as() -> dict[str, Any]:
    """``Popen`` arguments that drop root for a non-root user; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateServer:
    """One server: ``start``, ``stop`` (as for maintenance), ``kill`` (-9), ``close``."""

    name = "server"

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"zocalo-{self.name}-"))
        self._as = _run_as()
        if self._as:
            os.chown(self.directory, self._as["user"], self._as["group"])
        self.log = self.directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- what each server does differently -------------------------------------
    def _initialise(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def url(self, database: str) -> str:
        raise NotImplementedError

    def _create_database(self, name: str) -> None:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------
    def _call(self, *command: str) -> None:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=READY_WITHIN, **self._as
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the server (initialising its data directory the first time)."""
        if self.process is not None and self.process.poll() is None:
            return
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Poll until a connection works: a server announces readiness nowhere we can wait on."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(self.admin_database), poolclass=_no_pool())
        deadline = time.monotonic() + READY_WITHIN
        pause = threading.Event()
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
                try:
                    with engine.connect() as connection:
                        connection.execute(text("SELECT 1"))
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                pause.wait(0.05)
        finally:
            engine.dispose()

    def stop(self) -> None:
        """A clean shutdown, as for maintenance; the data stays."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self._stop_signal())
        try:
            self.process.wait(READY_WITHIN)
        except subprocess.TimeoutExpired:
            self.kill()
        self._end_group()

    def kill(self) -> None:
        """kill -9 of the server's whole process group, as a crash would."""
        if self.process is None:
            return
        self._end_group()
        self.process.wait(READY_WITHIN)

    def _end_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
            if self.process is not None:
                self._end_group()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database on this server: its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._create_database(name)
        return self.url(name)

    admin_database = ""


def _no_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


class PostgresServer(PrivateServer):
    """PostgreSQL from ``/usr/lib/postgresql/<version>/bin``, newest version first."""

    name = "postgresql"
    admin_database = "postgres"

    def __init__(self) -> None:
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"),
            key=lambda path: int(Path(path).parts[-3]),
        )
        if not found:
            raise ServerMissing("no PostgreSQL in /usr/lib/postgresql/*/bin (Debian: postgresql)")
        self.bin = Path(found[-1]).parent
        super().__init__()
        self.port = _free_port()
        self.data = self.directory / "data"
        self._call(
            str(self.bin / "initdb"),
            "--pgdata",
            str(self.data),
            "--auth=trust",
            "--username=zocalo",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def _command(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.directory),
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=40",
        ]

    def _stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: sessions are ended, data is kept

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://zocalo@/{database}?host={self.directory}&port={self.port}"

    def _create_database(self, name: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(
            self.url(self.admin_database), isolation_level="AUTOCOMMIT", poolclass=_no_pool()
        )
        with engine.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()


class MariaDBServer(PrivateServer):
    """MariaDB: ``mariadb-install-db`` once, then ``mariadbd``."""

    name = "mariadb"
    admin_database = "mysql"

    def __init__(self) -> None:
        self.server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        install = shutil.which("mariadb-install-db")
        if install is None or not Path(self.server).exists():
            raise ServerMissing("no mariadbd / mariadb-install-db (Debian: mariadb-server)")
        super().__init__()
        self.data = self.directory / "data"
        self.socket = self.directory / "mysqld.sock"
        self._call(
            install,
            "--no-defaults",
            f"--datadir={self.data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        )

    def _command(self) -> list[str]:
        return [
            self.server,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.socket}",
            f"--pid-file={self.directory / 'mysqld.pid'}",
            "--skip-networking",
            "--innodb-buffer-pool-size=32M",
            "--innodb-flush-log-at-trx-commit=2",
        ]

    def url(self, database: str) -> str:
        return (
            f"mysql+pymysql://root@localhost/{database}?unix_socket={self.socket}&charset=utf8mb4"
        )

    def _create_database(self, name: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(self.admin_database), poolclass=_no_pool())
        with engine.begin() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
