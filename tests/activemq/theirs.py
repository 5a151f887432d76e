"""A python-workflows CommonService under its own Frontend, on ActiveMQ (PyPI ``workflows``).

    python theirs.py PORT USER PASSWORD PREFIX QUEUE

Consumes QUEUE with the reference's recipe wrapper and forwards each message
along its recipe, adding one to ``payload["hops"]``, inside a STOMP transaction,
as the reference's own services do. The Frontend broadcasts its status and obeys
shutdown commands on the ``command`` topic.
"""

from __future__ import annotations

import sys

import workflows.recipe
from workflows.frontend import Frontend
from workflows.services.common_service import CommonService
from workflows.transport.stomp_transport import StompTransport

PORT, USER, PASSWORD, PREFIX, QUEUE = sys.argv[1:6]


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
    StompTransport.defaults.update(
        {
            "--stomp-host": "127.0.0.1",
            "--stomp-port": int(PORT),
            "--stomp-user": USER,
            "--stomp-pass": PASSWORD,
            "--stomp-prfx": PREFIX,
        }
    )
    print("starting", flush=True)
    Frontend(
        service=Theirs,
        transport="StompTransport",
        transport_command_channel="command",
        environment={},
    ).run()
