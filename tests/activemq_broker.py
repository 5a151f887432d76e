"""A private ActiveMQ Classic broker of the tests' own (Debian package ``activemq``).

Everything it has is under one temporary directory: its configuration (derived
from what the package ships: scheduler support on, no JMX, KahaDB, queues
ordered by priority, individual dead-letter queues ``DLQ.<queue>``, a user
with a password), its data and its log (log4j 1.2: without a properties file
it logs nothing at all). It listens on free ports of 127.0.0.1 only: STOMP and
OpenWire.

It runs ``activemq.jar`` directly (``/usr/bin/activemq`` would override the
base directory) as a :class:`~private_server.PrivateServer`: in its own
session, SIGTERM then SIGKILL to the whole process group on :meth:`stop`, which
keeps the data, so ``stop()`` then ``start()`` is a broker restart with
persistent messages intact.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import quote

from private_server import HOST, PrivateServer, free_port, stomp_answers

HOME = Path(os.environ.get("ZOCALO_TEST_ACTIVEMQ_HOME", "/usr/share/activemq"))
JAVA = os.environ.get("ZOCALO_TEST_JAVA", "java")
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


class PrivateActiveMQ(PrivateServer):
    """One private broker: ``start()``, ``stop()``, ``start()`` again, ``destroy()``."""

    label = "ActiveMQ"
    boot_timeout = BOOT_TIMEOUT
    stop_timeout = STOP_TIMEOUT

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

    def command(self) -> list[str]:
        return [
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

    def ready(self, remaining: float) -> bool:
        return stomp_answers(HOST, self.stomp_port, USER, self.password, HOST)

    def log_files(self) -> tuple[Path, ...]:
        return (self.data / "activemq.log",)
