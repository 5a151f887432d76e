"""ActiveMQ faults: a broker crash and restart mid-stream, a wrong host, wrong credentials."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from stomp_helpers import Forward, start_recipe, unique

from zocalo.recipe import Recipe

pytestmark = pytest.mark.stomp

SECRET = "Pw-s3cret"


def test_a_broker_crash_mid_stream_loses_nothing(activemq, stomp, run_service, collector, caplog):
    """The broker is killed (SIGKILL) and started again while a service forwards a stream:
    every connection reconnects and restores its subscriptions, and every message arrives
    (some twice: those whose ack the crash took)."""
    source, prefetch, out_prefetch = unique("stream"), 10, 50
    runner = run_service(Forward(source, prefetch=prefetch))
    news, listener = unique("news"), collector()
    runner.transport.subscribe_broadcast(news, listener)  # restored too
    out = collector(ack_with=stomp)
    stomp.subscribe(f"{source}.out", out, prefetch=out_prefetch)
    recipe = Recipe(
        {"1": {"queue": source, "output": 2}, "2": {"queue": f"{source}.out"}, "start": [[1, {}]]}
    )
    total = 600
    start_recipe(stomp, recipe, [{"n": n} for n in range(total)])
    out.wait_for_count(100, timeout=30)
    activemq.kill()
    activemq.start()
    received = out.wait_until(
        lambda ds: {json.loads(d.body)["payload"]["n"] for d in ds} >= set(range(total)),
        "every message after the restart",
        timeout=90,
    )
    duplicates = len(received) - total
    print(f"\nbroker restart: {total} messages, {duplicates} duplicates")
    assert duplicates <= prefetch + out_prefetch
    deadline = time.monotonic() + 60
    while not (runner.transport.connected and stomp.connected):
        assert time.monotonic() < deadline, "never reconnected"
        threading.Event().wait(0.05)
    assert any("reconnected to" in record.getMessage() for record in caplog.records)
    stomp.broadcast(news, b"after the restart")
    assert listener.wait_for_count(1)[0].body == b"after the restart"


def run_service_command(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zocalo.cli.service", "-s", "demo.FindSpots", "-t", url, *options],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wrong_credentials_are_one_line_from_zocalo_service(activemq):
    finished = run_service_command(activemq.url(password=SECRET, prefix="zocalo"))
    assert finished.returncode == 1
    assert finished.stdout == ""
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert "refused the credentials" in lines[0]
    assert SECRET not in finished.stderr


def test_the_password_stays_hidden_at_library_debug_level(activemq):
    """At ``-vv`` stomp.py logs every frame it sends: the CONNECT's passcode is hidden
    (its own mask never matched what it writes)."""
    finished = run_service_command(activemq.url(password=SECRET, prefix="zocalo"), "-vv")
    assert finished.returncode == 1
    assert "sending frame: [b'STOMP'" in finished.stderr  # the frames are logged
    assert "refused the credentials" in finished.stderr.splitlines()[-1]
    assert SECRET not in finished.stderr


def test_a_wrong_host_is_one_line_from_zocalo_service(activemq):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = activemq.url(password=SECRET).replace(f":{activemq.stomp_port}", f":{port}")
    finished = run_service_command(url)
    assert finished.returncode == 1
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert f"cannot connect to ActiveMQ at stomp://zocalo:***@127.0.0.1:{port}" in lines[0]
    assert "Connection refused" in lines[0]
    assert SECRET not in finished.stderr
