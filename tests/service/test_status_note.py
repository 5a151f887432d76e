"""A service's own note (``Service.status_note``) travels with its status, as soon as it changes."""

from __future__ import annotations

import json
import time

from zocalo.service import Service
from zocalo.service.status import STATUS_TOPIC, Identity, Status, StatusBroadcaster
from zocalo.transport import create_transport


def test_a_service_has_nothing_to_note_by_default():
    assert Service().status_note() is None


def test_a_note_goes_out_at_once_and_goes_away_with_its_cause(broker_url, client, collector):
    seen = collector()
    client.subscribe_broadcast(STATUS_TOPIC, seen)
    note: list[str] = []
    transport = create_transport(broker_url)
    transport.connect()
    broadcaster = StatusBroadcaster(
        transport,
        Identity("test.host.1", 1, time.monotonic(), 0),
        service="Writer",
        service_class="Writer",
        read=lambda: (Status.IDLE, {"handled": 3, **({"note": note[0]} if note else {})}),
        on_shutdown=lambda reason: None,
        interval=3600,  # no periodic broadcast: only a change sends one
    )

    def reports() -> list[dict]:
        return [json.loads(body) for body in seen.bodies]

    try:
        broadcaster.start()
        seen.wait_for_count(1)
        assert "note" not in reports()[0]
        note.append("waiting for the database db since 10:00:00: connection refused")
        seen.wait_for_count(2)
        assert reports()[1]["note"] == note[0]
        assert reports()[1]["status"] == Status.IDLE, "the service is healthy meanwhile"
        note.clear()
        seen.wait_for_count(3)
        assert "note" not in reports()[2]
    finally:
        broadcaster.finish(Status.TEARDOWN)
        transport.close()
