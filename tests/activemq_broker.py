"""A private ActiveMQ Classic broker of the tests' own (Debian package ``activemq``).

Everything it has is under one temporary directory: its configuration (derived
from what the package ships: scheduler support on, no JMX, KahaDB, queues
ordered by priority, individual dead-letter queues ``DLQ.<queue>``, a user
with a password), its data and its log (log4j 1.2: without a properties file
it logs nothing at all). It listens on free ports of 127.0.0.1 only: STOMP and
OpenWire.

It runs ``activemq.jar`` directly (``/usr/bin/activemq`` would override the
base directory) in its own session, so :meth:`PrivateActiveMQ.stop` can kill
the whole process group if SIGTERM is not enough. :meth:`stop` keeps the
data, so ``stop()`` then ``start()`` is a broker restart with persistent
messages intact.
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

HOME = Path(os.environ.get("ZOCALO_TEST_ACTIVEMQ_HOME", "/usr/share/activemq"))
JAVA = os.environ.get("ZOCALO_TEST_JAVA", "java")
HOST = "127.0.0.1"
USER = "zocalo"
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
#: JVM options: a small heap, and the serial collector (G1's threads cost a 2-core
#: machine more than they save on a heap this size); C1 only, for a quicker start.
JVM_OPTIONS = ("-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

#: How long a durable subscription (a bound queue) may stay without a consumer.
OFFLINE_DURABLE_TIMEOUT_MS = 60_000

CONFIG = """\
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
    http://activemq.apache.org/schema/core
    http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core"
          brokerName="{name}" useJmx="false" persistent="true" schedulerSupport="true"
          dataDirectory="{data}"
          offlineDurableSubscriberTimeout="{offline_timeout}"
          offlineDurableSubscriberTaskSchedule="1000">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <policyEntry queue="&gt;" prioritizedMessages="true">
            <deadLetterStrategy>
              <individualDeadLetterStrategy queuePrefix="DLQ." useQueueForQueueMessages="true"
                                            processExpired="false"/>
            </deadLetterStrategy>
          </policyEntry>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <plugins>
      <simpleAuthenticationPlugin>
        <users>
          <authenticationUser username="{user}" password="{password}" groups="users"/>
        </users>
      </simpleAuthenticationPlugin>
    </plugins>
    <persistenceAdapter>
      <kahaDB directory="{data}/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="128 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="1 gb"/></storeUsage>
        <tempUsage><tempUsage limit="512 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://{host}:{openwire_port}"/>
      <transportConnector name="stomp" uri="stomp+nio://{host}:{stomp_port}"/>
    </transportConnectors>
  </broker>
</beans>
"""

LOG4J = """\
log4j.rootLogger=INFO, file
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.file={data}/activemq.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d %-5p %c{{1}} - %m%n
"""


def free_port() -> int:
    """A port nothing listens on right now (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class PrivateActiveMQ:
    """One private broker: ``start()``, ``stop()``, ``start()`` again, ``destroy()``."""

    def __init__(
        self, base: Path | None = None, jvm_options: tuple[str, ...] = JVM_OPTIONS
    ) -> None:
        self.jvm_options = jvm_options
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="zocalo-activemq-"))
        self.conf = self.base / "conf"
        self.data = self.base / "data"
        for directory in (self.conf, self.data):
            directory.mkdir(parents=True, exist_ok=True)
        self.stomp_port = free_port()
        self.openwire_port = free_port()
        self.password = secrets.token_hex(8)
        self.output_file = self.base / "java.out"
        self.boot_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        values = {
            "name": f"zocalo-test-{os.getpid()}",
            "data": self.data,
            "host": HOST,
            "stomp_port": self.stomp_port,
            "openwire_port": self.openwire_port,
            "user": USER,
            "password": self.password,
            "offline_timeout": OFFLINE_DURABLE_TIMEOUT_MS,
        }
        (self.conf / "activemq.xml").write_text(CONFIG.format(**values))
        (self.conf / "log4j.properties").write_text(LOG4J.format(**values))

    def url(self, *, user: str = USER, password: str | None = None, **options: object) -> str:
        """``stomp://`` for this broker; ``options`` become the query."""
        secret = self.password if password is None else password
        url = f"stomp://{quote(user, safe='')}:{quote(secret, safe='')}@{HOST}:{self.stomp_port}"
        query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in options.items())
        return f"{url}?{query}" if query else url

    @property
    def pid(self) -> int | None:
        """The broker's JVM (the leader of its process group), while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Start the broker (keeping its data) and wait until STOMP answers; seconds taken."""
        if self.running:
            return 0.0
        began = time.monotonic()
        command = [
            JAVA,
            *self.jvm_options,
            f"-Dactivemq.home={HOME}",
            f"-Dactivemq.base={self.base}",
            f"-Dactivemq.conf={self.conf}",
            f"-Dactivemq.data={self.data}",
            f"-Dlog4j.configuration=file:{self.conf / 'log4j.properties'}",
            "-jar",
            str(HOME / "bin" / "activemq.jar"),
            "start",
            f"xbean:file:{self.conf / 'activemq.xml'}",
        ]
        with self.output_file.open("ab") as output:
            self._process = subprocess.Popen(
                command,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + timeout
        try:
            while not self._answers_stomp():
                if not self.running:
                    raise RuntimeError(f"ActiveMQ exited during start{self._tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ActiveMQ did not start within {timeout}s{self._tail()}")
                self._wait_for_exit(0.1)  # returns at once if it dies
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - began
        return self.boot_seconds

    def _answers_stomp(self) -> bool:
        """A STOMP CONNECT is answered with CONNECTED (the broker is fully up)."""
        frame = (
            f"CONNECT\naccept-version:1.2\nhost:{HOST}\nlogin:{USER}\npasscode:{self.password}\n\n"
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
        """Stop the broker (data kept): SIGTERM, then SIGKILL its whole process group."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            if not self._wait_for_exit(timeout):
                self._kill_group(process.pid)
                self._wait_for_exit(10)
        self._kill_group(process.pid)  # anything left in its group
        self._process = None

    def kill(self) -> None:
        """Stop the broker as a crash would (SIGKILL); the data stays."""
        process = self._process
        if process is not None:
            self._kill_group(process.pid)
            self._wait_for_exit(10)
            self._process = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stop the broker and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.output_file, self.data / "activemq.log"):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                texts.append(f"\n--- {path} ---\n" + "\n".join(tail))
        return "".join(texts)

    def __enter__(self) -> PrivateActiveMQ:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
