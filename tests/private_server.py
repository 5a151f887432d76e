"""The life of a server process of the tests' own (a private ActiveMQ or RabbitMQ node).

One home for what every private server does alike: it runs in its own session,
with its output appended to a file, so :meth:`PrivateServer.stop` can end the
whole process group (the server's own stop first, SIGKILL to whatever is left)
and a failed start can show the end of its output and logs. Each subclass keeps
its own configuration and says how to run it, how to tell it is up and where
it logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Self, TypeVar

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def stomp_answers(host: str, port: int, login: str, passcode: str, vhost_header: str) -> bool:
    """A STOMP CONNECT is answered with CONNECTED (the broker is fully up)."""
    frame = (
        f"CONNECT\naccept-version:1.2\nhost:{vhost_header}\nlogin:{login}\npasscode:{passcode}\n\n"
    ).encode() + b"\x00"
    try:
        with socket.create_connection((host, port), timeout=2) as probe:
            probe.sendall(frame)
            answer = probe.recv(64)
            with contextlib.suppress(OSError):
                probe.sendall(b"DISCONNECT\n\n\x00")
            return answer.startswith(b"CONNECTED")
    except OSError:
        return False


def kill_group(pgid: int) -> None:
    """SIGKILL to a whole process group (gone already is fine)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class PrivateServer:
    """``start()``, ``stop()`` (data kept: ``start()`` again is a restart), ``kill()``,
    ``destroy()``; a subclass sets ``base``/``output_file`` and the hooks below."""

    #: The server's name in error messages.
    label = "server"
    boot_timeout = 30.0
    stop_timeout = 20.0
    #: How long to wait for an exit between two readiness checks.
    poll_seconds = 0.1

    base: Path
    output_file: Path
    boot_seconds: float | None = None
    stop_seconds: float | None = None
    _process: subprocess.Popen[bytes] | None = None

    # -- hooks ------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment; ``None``: this process's."""
        return None

    def ready(self, remaining: float) -> bool:
        """The server serves; ``remaining``: seconds left of the boot deadline."""
        raise NotImplementedError

    def terminate(self, timeout: float) -> None:
        """Ask the server to stop: SIGTERM to its process group."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGTERM)

    def log_files(self) -> Iterable[Path]:
        return ()

    # -- life -------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The server's first process (the leader of its process group), while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float | None = None) -> float:
        """Start the server (keeping its data) and wait until it serves; seconds taken."""
        if self.running:
            return 0.0
        timeout = self.boot_timeout if timeout is None else timeout
        began = time.monotonic()
        with self.output_file.open("ab") as output:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.base,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + timeout
        try:
            while not self.ready(deadline - time.monotonic()):
                if not self.running:
                    status = self._process.returncode
                    raise RuntimeError(
                        f"{self.label} exited during start (status {status}){self._tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.label} did not start within {timeout}s{self._tail()}"
                    )
                self._wait_for_exit(self.poll_seconds)  # returns at once if it dies
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - began
        return self.boot_seconds

    def _wait_for_exit(self, seconds: float) -> bool:
        if self._process is None:
            return True
        try:
            self._process.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server (data kept): its own stop, then SIGKILL to its process group."""
        process = self._process
        if process is None:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        began = time.monotonic()
        if process.poll() is None:
            self.terminate(timeout)
            if not self._wait_for_exit(timeout):
                kill_group(process.pid)
                self._wait_for_exit(10)
        kill_group(process.pid)  # anything left in its group (the leader exited, a child did not)
        self._process = None
        self.stop_seconds = time.monotonic() - began

    def kill(self) -> None:
        """Stop the server as a crash would (SIGKILL to its group); the data stays."""
        process = self._process
        if process is not None:
            kill_group(process.pid)
            self._wait_for_exit(10)
            self._process = None

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.output_file, *self.log_files()):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                texts.append(f"\n--- {path} ---\n" + "\n".join(tail))
        return "".join(texts)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


Server = TypeVar("Server", bound=PrivateServer)


def serving(server: Server, name: str, where: Callable[[Server], str]) -> Iterator[Server]:
    """A session fixture's body: start ``server``, print how long it took and ``where``
    it listens, yield it, and stop and delete it at the end."""
    try:
        seconds = server.start()
        print(f"\n[{name}] started in {seconds:.1f}s ({where(server)})")
        yield server
    finally:
        server.destroy()
