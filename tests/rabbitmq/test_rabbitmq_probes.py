"""Passive declares that find nothing are quiet; every other channel close is still logged."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pika
import pika.exceptions
import pytest

from zocalo.transport import create_transport

pytestmark = pytest.mark.rabbitmq


def unique(label: str) -> str:
    return f"probes.{label}.{uuid.uuid4().hex[:8]}"


def channel_closes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("pika") and record.levelno >= logging.WARNING
    ]


def test_probing_for_absent_queues_and_exchanges_logs_nothing(
    rabbitmq_vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A new queue (and its DLQ), a new broadcast topic and the delay plugin's exchange
    are each looked up by a passive declare that the broker answers with 404."""
    caplog.set_level(logging.WARNING)
    queue, topic = unique("queue"), unique("topic")
    with create_transport(rabbitmq_vhost_url) as transport:
        transport.declare_queue(queue)
        transport.subscribe_broadcast(topic, lambda delivery: None)
        transport.send(queue, b"later", delay=60)
    assert not channel_closes(caplog), channel_closes(caplog)


def test_another_channel_closed_by_the_broker_is_still_logged(
    rabbitmq_vhost_url: str, operator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with create_transport(rabbitmq_vhost_url) as transport:
        transport.declare_queue(unique("queue"))  # the probes' filter is in place
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        operator.queue_bind(unique("missing"), "amq.direct", "key")
    [line] = channel_closes(caplog)
    assert "Channel.Close (404)" in line and "NOT_FOUND" in line, line
