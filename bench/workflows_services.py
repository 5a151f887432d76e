"""python-workflows side of ``bench/rabbitmq.py`` and ``bench/activemq.py``: the two steps
under the reference Frontend.

    python workflows_services.py Step1|Step2|Step1NoTx|Step2NoTx VHOST [HOST [PORT]]
    python workflows_services.py Step1|Step2 --stomp HOST PORT USER PASSWORD PREFIX

Each step is a ``CommonService`` that ``wrap_subscribe``s its queue with manual
acknowledgement and ``$ZOCALO_BENCH_PREFETCH`` (default 100) and forwards the
message to the next recipe step. ``Step1``/``Step2`` use the at-least-once
pattern of the reference's own services: a transaction on the subscription's
channel holding the ack and the send, committed per message. The ``NoTx``
variants send, then ack (no transaction).

The service runs under ``workflows.frontend.Frontend`` with ``PikaTransport``,
pointed at the vhost through ``PikaTransport.defaults`` (what
``--rabbit-vhost`` / ``load_configuration_file`` would set), or with
``StompTransport`` (``--stomp``: its ``--stomp-*`` defaults; the reference passes
no prefetch on STOMP, so ActiveMQ's default applies, and its transactions are
STOMP transactions). The Frontend forks the service; SIGTERM to the process
group stops both.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import workflows.recipe
from workflows.frontend import Frontend
from workflows.services.common_service import CommonService
from workflows.transport.pika_transport import PikaTransport

PREFETCH = int(os.environ.get("ZOCALO_BENCH_PREFETCH", "100"))
STEP1_QUEUE = "bench.step1"
STEP2_QUEUE = "bench.step2"


class _Step(CommonService):
    queue = ""
    transactional = True

    def initializing(self) -> None:
        workflows.recipe.wrap_subscribe(
            self._transport,
            self.queue,
            self.process,
            acknowledgement=True,
            prefetch_count=PREFETCH,
        )

    def process(self, rw: Any, header: dict[str, Any], message: Any) -> None:
        if self.transactional:
            txn = self._transport.transaction_begin(subscription_id=header["subscription"])
            self._transport.ack(header, transaction=txn)
            rw.send(message, transaction=txn)
            self._transport.transaction_commit(txn)
        else:
            rw.send(message)
            self._transport.ack(header)


class Step1(_Step):
    _service_name = "Step1"
    _logger_name = "bench.workflows.step1"
    queue = STEP1_QUEUE


class Step2(_Step):
    _service_name = "Step2"
    _logger_name = "bench.workflows.step2"
    queue = STEP2_QUEUE


class Step1NoTx(Step1):
    _service_name = "Step1NoTx"
    transactional = False


class Step2NoTx(Step2):
    _service_name = "Step2NoTx"
    transactional = False


SERVICES = {cls.__name__: cls for cls in (Step1, Step2, Step1NoTx, Step2NoTx)}


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "--stomp":
        main_stomp(argv[0], *argv[2:7])
        return
    name, vhost = argv[0], argv[1]
    host = argv[2] if len(argv) > 2 else "127.0.0.1"
    port = argv[3] if len(argv) > 3 else "5672"
    PikaTransport.defaults.update(
        {"--rabbit-host": host, "--rabbit-port": port, "--rabbit-vhost": vhost}
    )
    # zocalo.service passes the site configuration here; the steps need none.
    Frontend(service=SERVICES[name], transport="PikaTransport", environment={"config": None}).run()


def main_stomp(name: str, host: str, port: str, user: str, password: str, prefix: str) -> None:
    from workflows.transport.stomp_transport import StompTransport

    StompTransport.defaults.update(
        {
            "--stomp-host": host,
            "--stomp-port": int(port),
            "--stomp-user": user,
            "--stomp-pass": password,
            "--stomp-prfx": prefix,
        }
    )
    Frontend(service=SERVICES[name], transport="StompTransport", environment={"config": None}).run()


if __name__ == "__main__":
    main(sys.argv[1:])
