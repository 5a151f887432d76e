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
the ``rabbitmq`` user. It runs as a :class:`~private_server.PrivateServer`, in
its own session, so :meth:`stop` can end the whole process group (SIGTERM stops
the node cleanly; SIGKILL if it lingers).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import quote

from private_server import HOST, PrivateServer, free_port, stomp_answers

SERVER = Path(
    os.environ.get("ZOCALO_TEST_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server")
)
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


class PrivateRabbitMQStomp(PrivateServer):
    """One private node: ``start()``, ``stop()``, ``start()`` again (a restart: the data
    stays), ``destroy()``."""

    label = "RabbitMQ"
    boot_timeout = BOOT_TIMEOUT
    stop_timeout = STOP_TIMEOUT

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

    def command(self) -> list[str]:
        return [str(SERVER)]

    def ready(self, remaining: float) -> bool:
        return stomp_answers(HOST, self.stomp_port, USER, PASSWORD, "/")

    def log_files(self) -> list[Path]:
        return sorted((self.base / "log").glob("*.log"))
