"""RabbitMQ after a reconnect: what the lost connection took with it comes back. The
broker is reached through a proxy the test controls (:mod:`tcp_proxy`), so a
connection can be cut. (What every broker's reconnect does, a close during an
attempt and the growing delays, is tested in ``tests/transport/test_reconnect.py``.)"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tcp_proxy import Proxy
from zocalo.transport import Outgoing, create_transport, reply_queue_name

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    proxy = Proxy()
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_url(rabbitmq_vhost_url: str, proxy: Proxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}{urlsplit(rabbitmq_vhost_url).path}?timeout=2"


def test_a_reply_queue_comes_back_after_a_reconnect(
    rabbitmq_vhost_url, proxied_url, proxy, collector, wait_until, caplog
):
    """RabbitMQ deletes an exclusive queue with its connection: after a reconnect the
    caller's reply queue is declared again, empty, and consumed, and replies reach it."""
    caller = create_transport(proxied_url)
    caller.connect()
    try:
        queue = reply_queue_name()
        caller.declare_reply_queue(queue)
        received = collector(ack_with=caller)
        caller.subscribe(queue, received)
        proxy.drop()
        wait_until(
            lambda: any("reconnected to" in r.getMessage() for r in caplog.records),
            "the reconnect",
            30,
        )
        with create_transport(rabbitmq_vhost_url) as worker:
            worker.publish([Outgoing(queue, b"after", droppable=True)]).result(10)
        assert received.wait_for_body(b"after", timeout=20)[-1].body == b"after"
    finally:
        caller.close()
