"""A second RabbitMQ node of the tests' own, with a TLS listener.

It never touches the machine's broker (``rabbit@localhost``): it has its own
node name, AMQP, TLS and Erlang distribution ports, and its own data, log,
config, env and enabled-plugins files, all under one temporary directory. The
only thing it shares with the machine's node is the Erlang cookie (copied into
its own ``HOME``) and the running ``epmd``.

The server runs as a :class:`~private_server.PrivateServer`, in its own session
(process group), so that :meth:`SecondNode.stop` can fall back to killing the
whole group; it also checks that no ``beam.smp`` of this node survives.
:meth:`stop` keeps the data directory, so ``stop()`` then ``start()`` is a
broker restart with durable state intact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from private_server import HOST, PrivateServer, free_port

RABBITMQ_BIN = Path(os.environ.get("ZOCALO_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
#: Where ``rabbitmqctl`` (the /usr/sbin wrapper, which runs as the ``rabbitmq``
#: user when called as root) finds the machine's cookie; else ``$HOME``'s.
MACHINE_COOKIES = (Path("/var/lib/rabbitmq/.erlang.cookie"), Path.home() / ".erlang.cookie")
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def machine_cookie() -> Path:
    for candidate in MACHINE_COOKIES:
        if os.access(candidate, os.R_OK):
            return candidate
    raise RuntimeError(f"no readable Erlang cookie in {[str(c) for c in MACHINE_COOKIES]}")


class SecondNode(PrivateServer):
    """One private RabbitMQ node: ``start()``, ``stop()``, ``start()`` again, ``destroy()``.

    ``certfile``/``keyfile``/``cafile`` (PEM paths) give it a TLS listener;
    without them it only listens for plain AMQP. A client certificate is checked
    against ``cafile`` when offered; ``require_client_certificate`` refuses a
    TLS client that offers none.
    """

    boot_timeout = BOOT_TIMEOUT
    stop_timeout = STOP_TIMEOUT
    poll_seconds = 1.0

    def __init__(
        self,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        cafile: str | os.PathLike[str] | None = None,
        require_client_certificate: bool = False,
        name: str | None = None,
    ) -> None:
        self.name = name or f"zocalo-tls-{os.getpid()}"
        self.node = self.label = f"{self.name}@localhost"
        self.base = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.home = self.base / "home"
        self.mnesia_base = self.base / "mnesia"
        self.log_base = self.base / "log"
        for directory in (self.home, self.mnesia_base, self.log_base):
            directory.mkdir()
        self.config_file = self.base / "rabbitmq.conf"
        self.advanced_config_file = self.base / "advanced.config"
        self.env_file = self.base / "rabbitmq-env.conf"
        self.plugins_file = self.base / "enabled_plugins"
        self.output_file = self.base / "server.out"
        self.amqp_port = free_port()
        self.tls_port = free_port() if certfile else None
        self.dist_port = free_port()
        self.ca_path = str(cafile) if cafile else None
        self.require_client_certificate = require_client_certificate
        self._write_files(certfile, keyfile, cafile)

    # -- files and environment --------------------------------------------------
    def _write_files(self, certfile: object, keyfile: object, cafile: object) -> None:
        cookie = self.home / ".erlang.cookie"
        shutil.copyfile(machine_cookie(), cookie)
        cookie.chmod(0o400)
        lines = [
            f"listeners.tcp.local = {HOST}:{self.amqp_port}",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
            "disk_free_limit.absolute = 10MB",
        ]
        if self.tls_port is not None:
            lines += [
                f"listeners.ssl.local = {HOST}:{self.tls_port}",
                f"ssl_options.cacertfile = {cafile}",
                f"ssl_options.certfile = {certfile}",
                f"ssl_options.keyfile = {keyfile}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = "
                + ("true" if self.require_client_certificate else "false"),
            ]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.advanced_config_file.write_text("[].\n")
        self.plugins_file.write_text("[].\n")
        # Our own env file, so the machine's /etc/rabbitmq/rabbitmq-env.conf
        # (which names rabbit@localhost) is never read.
        self.env_file.write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")

    @property
    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(self.env_file),
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.advanced_config_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.plugins_file),
            RABBITMQ_MNESIA_BASE=str(self.mnesia_base),
            RABBITMQ_LOG_BASE=str(self.log_base),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.base / "plugins-expand"),
            RABBITMQ_PID_FILE=str(self.base / "server.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
            # Puts the node's name on the beam.smp command line, for `ps` checks.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"-zocalo_test_node {self.name}",
            ERL_CRASH_DUMP=str(self.base / "erl_crash.dump"),
        )
        return env

    # -- URLs -----------------------------------------------------------------
    def url(
        self,
        *,
        tls: bool = True,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        port: int | None = None,
        host: str = HOST,
        **options: str,
    ) -> str:
        scheme = "amqps" if tls else "amqp"
        if port is None:
            port = self.tls_port if tls else self.amqp_port
        if tls and "cafile" not in options and self.ca_path:
            options = {"cafile": self.ca_path, **options}
        query = "&".join(f"{key}={quote(str(value), safe='/')}" for key, value in options.items())
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        url = f"{scheme}://{credentials}@{host}:{port}/{quote(vhost, safe='')}"
        return f"{url}?{query}" if query else url

    @property
    def amqps_url(self) -> str:
        return self.url(tls=True)

    @property
    def amqp_url(self) -> str:
        return self.url(tls=False)

    # -- control --------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <this node> ...``; only ever against this node."""
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def command(self) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def environment(self) -> dict[str, str]:
        return self.env

    def ready(self, remaining: float) -> bool:
        # await_startup itself waits (up to its timeout) for the node to come up;
        # it fails fast while the node's distribution is not reachable yet.
        if remaining <= 0:
            return False
        result = self.ctl(
            "await_startup", "--timeout", str(max(1, round(remaining))), timeout=remaining + 30
        )
        return result.returncode == 0

    def terminate(self, timeout: float) -> None:
        """``rabbitmqctl stop``: the node stops cleanly."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("stop", timeout=timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the node (data kept), then make sure no ``beam.smp`` of it is left."""
        super().stop(timeout)
        leftovers = self.beam_pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        still = self.beam_pids()
        if still:
            raise RuntimeError(f"beam.smp of {self.node} survived stop: pids {still}")

    def beam_pids(self) -> list[int]:
        """Live ``beam.smp`` processes of this node (by its name on their command line)."""
        listing = subprocess.run(
            ["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True
        ).stdout
        pids = []
        marker = f"-zocalo_test_node {self.name}"
        for line in listing.splitlines():
            pid, stat, args = [*line.strip().split(None, 2), "", ""][:3]
            if "beam" in args and marker in args and not stat.startswith("Z"):
                pids.append(int(pid))
        return pids

    def close_connections(self, reason: str = "closed by the test") -> None:
        """Close every client connection to this node (never the machine's broker)."""
        result = self.ctl("close_all_connections", reason)
        if result.returncode != 0:
            raise RuntimeError(f"close_all_connections on {self.node}: {result.stderr.strip()}")

    def log_files(self) -> list[Path]:
        return sorted(self.log_base.glob("*.log"))
