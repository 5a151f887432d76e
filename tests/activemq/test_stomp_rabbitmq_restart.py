"""RabbitMQ's STOMP plugin restarted mid-stream (the session's private node,
``rabbitmq_stomp``): the STOMP transport reconnects there as on ActiveMQ.

The node is stopped cleanly (SIGTERM). After a SIGKILL, RabbitMQ 3.10.8 restarted within
seconds but left SUBSCRIBEs to the recovering quorum queues unanswered for over a minute
(measured), longer than a test should wait: that is the broker's recovery, not ours."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from stomp_helpers import PREFIX, Forward, start_recipe, unique

from zocalo.recipe import Recipe
from zocalo.service import RunnerSettings, ServiceRunner
from zocalo.transport import create_transport

pytestmark = [pytest.mark.stomp, pytest.mark.slow]


def test_a_rabbitmq_node_restart_mid_stream_loses_nothing(
    rabbitmq_stomp: Any, collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Its queues are quorum queues, which keep what they confirmed: after the restart
    every connection resubscribes and every message arrives (some twice: those whose
    ack the crash took)."""
    url = rabbitmq_stomp.url(prefix=PREFIX, vhost="/")
    source, prefetch, out_prefetch = unique("stream"), 10, 50
    runner = ServiceRunner(
        Forward(source, prefetch=prefetch), create_transport(url), RunnerSettings(retry_delay=0.05)
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    assert runner.started.wait(20)
    try:
        with create_transport(url) as client:
            out = collector(ack_with=client)
            client.subscribe(f"{source}.out", out, prefetch=out_prefetch)
            recipe = Recipe(
                {"1": {"queue": source, "output": 2}, "2": {"queue": f"{source}.out"}}
                | {"start": [[1, {}]]}
            )
            total = 400
            start_recipe(client, recipe, [{"n": n} for n in range(total)])
            out.wait_for_count(50, timeout=30)
            rabbitmq_stomp.stop()
            restarted = rabbitmq_stomp.start()
            received = out.wait_until(
                lambda ds: {json.loads(d.body)["payload"]["n"] for d in ds} >= set(range(total)),
                "every message after the restart",
                timeout=90,
            )
            duplicates = len(received) - total
            print(f"\nnode restart ({restarted:.1f}s): {total} messages, {duplicates} duplicates")
            assert duplicates <= prefetch + out_prefetch
            deadline = time.monotonic() + 60
            while not (runner.transport.connected and client.connected):
                assert time.monotonic() < deadline, "never reconnected"
                threading.Event().wait(0.05)
            assert any("reconnected to" in record.getMessage() for record in caplog.records)
    finally:
        runner.request_stop()
        thread.join(20)
    assert not thread.is_alive(), "the service did not stop"
