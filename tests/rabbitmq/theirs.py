"""A python-workflows CommonService under its own Frontend (PyPI ``workflows``).

    python theirs.py HOST PORT VHOST QUEUE

Consumes QUEUE with the reference's recipe wrapper and forwards each
message along its recipe, adding one to ``payload["hops"]``, inside a
transaction on the subscription, as the reference's own services do.
"""

from __future__ import annotations

import sys

import workflows.recipe
from workflows.frontend import Frontend
from workflows.services.common_service import CommonService
from workflows.transport.pika_transport import PikaTransport

HOST, PORT, VHOST, QUEUE = sys.argv[1:5]


class Theirs(CommonService):
    _service_name = "Theirs"
    _logger_name = "tests.theirs"

    def initializing(self):
        workflows.recipe.wrap_subscribe(self._transport, QUEUE, self.forward, acknowledgement=True)

    def forward(self, rw, header, message):
        txn = self._transport.transaction_begin(subscription_id=header["subscription"])
        self._transport.ack(header, transaction=txn)
        rw.send({**message, "hops": message.get("hops", 0) + 1}, transaction=txn)
        self._transport.transaction_commit(txn)


if __name__ == "__main__":
    PikaTransport.defaults.update(
        {"--rabbit-host": HOST, "--rabbit-port": PORT, "--rabbit-vhost": VHOST}
    )
    print("starting", flush=True)
    Frontend(service=Theirs, transport="PikaTransport", environment={}).run()
