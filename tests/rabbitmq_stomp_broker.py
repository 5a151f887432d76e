"""A private RabbitMQ node with the STOMP plugin, for the tests of ``stomp://`` on RabbitMQ.

The machine's RabbitMQ (127.0.0.1:5672) is shared and must not be reconfigured,
so the STOMP plugin is enabled on a node of the tests' own: its own name
(``zocalo-stomp-<random>@localhost``), free ports of 127.0.0.1 for AMQP, STOMP
and Erlang distribution, and everything it writes (configuration, enabled
plugins, Mnesia, logs, its Erlang cookie) under one temporary directory. It
shares only epmd, the machine's port-name registry, where it registers its name.
No management plugin: its port belongs to the shared node.

``rabbitmq-server`` is the packaged script itself (``/usr/lib/rabbitmq/bin``),
not the ``/usr/sbin`` wrapper, which changes to ``/var/lib/rabbitmq`` and to
the ``rabbitmq`` user. It runs in its own session, so :meth:`stop` can end the
whole process group (SIGTERM stops the node cleanly; SIGKILL if it lingers).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SERVER = Path(
    os.environ.get("ZOCALO_TEST_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server")
)
HOST = "127.0.0.1"
#: Loopback only, so the default user may log in: nothing else can reach the node.
USER = PASSWORD = "guest"
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

CONFIG = """\
listeners.tcp.default = {host}:{amqp_port}
stomp.listeners.tcp.1 = {host}:{stomp_port}
stomp.default_vhost = /
loopback_users = none
log.console = false
log.file.level = info
"""


def free_port() -> int:
    """A port nothing listens on right now (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class PrivateRabbitMQStomp:
    """One private node: ``start()``, ``stop()``, ``start()`` again (a restart: the data
    stays), ``destroy()``."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="zocalo-rabbit-stomp-"))
        self.node = f"zocalo-stomp-{secrets.token_hex(4)}@localhost"
        self.amqp_port, self.stomp_port, self.dist_port = free_port(), free_port(), free_port()
        for directory in ("mnesia", "log", "home"):
            (self.base / directory).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            CONFIG.format(host=HOST, amqp_port=self.amqp_port, stomp_port=self.stomp_port)
        )
        (self.base / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        # An empty env file: the machine's /etc/rabbitmq/rabbitmq-env.conf names the shared node.
        (self.base / "rabbitmq-env.conf").write_text("")
        self.output_file = self.base / "server.out"
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """The environment that makes ``rabbitmq-server`` this node and nothing else."""
        base = self.base
        return {
            **os.environ,
            "HOME": str(base / "home"),  # its Erlang cookie
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def url(self, **options: object) -> str:
        """``stomp://`` for this node; ``options`` become the query."""
        url = f"stomp://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@{HOST}:{self.stomp_port}"
        query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in options.items())
        return f"{url}?{query}" if query else url

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Start the node and wait until STOMP answers a CONNECT; seconds taken."""
        if self.running:
            return 0.0
        began = time.monotonic()
        with self.output_file.open("ab") as output:
            self._process = subprocess.Popen(
                [str(SERVER)],
                cwd=self.base,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + timeout
        try:
            while not self._answers_stomp():
                if not self.running:
                    raise RuntimeError(f"RabbitMQ exited during start{self._tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ did not start within {timeout}s{self._tail()}")
                self._wait_for_exit(0.1)  # returns at once if it dies
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - began
        return self.boot_seconds

    def _answers_stomp(self) -> bool:
        frame = (
            f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{USER}\npasscode:{PASSWORD}\n\n"
        ).encode() + b"\x00"
        try:
            with socket.create_connection((HOST, self.stomp_port), timeout=2) as probe:
                probe.sendall(frame)
                answer = probe.recv(64)
                with contextlib.suppress(OSError):
                    probe.sendall(b"DISCONNECT\n\n\x00")
                return answer.startswith(b"CONNECTED")
        except OSError:
            return False

    def _wait_for_exit(self, seconds: float) -> bool:
        if self._process is None:
            return True
        try:
            self._process.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node: SIGTERM to its process group, SIGKILL to what is left."""
        process = self._process
        if process is None:
            return
        began = time.monotonic()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            if not self._wait_for_exit(timeout):
                self._kill_group(process.pid)
                self._wait_for_exit(10)
        self._kill_group(process.pid)  # anything left in its group (epmd is not: a daemon)
        self._process = None
        self.stop_seconds = time.monotonic() - began

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stop the node and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.output_file, *sorted((self.base / "log").glob("*.log"))):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                texts.append(f"\n--- {path} ---\n" + "\n".join(tail))
        return "".join(texts)

    def __enter__(self) -> PrivateRabbitMQStomp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
