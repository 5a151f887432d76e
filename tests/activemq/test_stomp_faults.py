"""ActiveMQ faults: a broker crash and restart mid-stream, a wrong host, wrong credentials,
frames the broker cannot read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stomp_helpers import Forward, start_recipe, unique

from zocalo.errors import PublishFailed
from zocalo.recipe import Recipe
from zocalo.transport import Outgoing, create_transport
from zocalo.transport.base import DLQ_REASON_HEADER, dlq_name

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
    duplicates = out.wait_for_every_number(total, "the restart")
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


#: More than ActiveMQ's STOMP codec reads in one frame: a header line over 10 KiB, or
#: over 1000 headers (it then drops the whole connection).
UNREADABLE = {
    "long header": {"detail": "x" * 11_000},
    "long escaped header": {"detail": ":" * 5_200},  # each escaped in two bytes
    "many headers": {f"h{n}": "v" for n in range(1_000)},
}


@pytest.mark.parametrize("headers", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_message_activemq_cannot_read_is_refused_and_the_connection_stays(
    stomp, collector, headers
):
    """Refused before anything is sent, naming why: the connection and what it holds
    (a delivery in hand, the input of the publish) are not taken down with it."""
    queue = unique("unreadable")
    stomp.send(queue, b"in hand")
    held = collector()
    stomp.subscribe(queue, held)
    [delivery] = held.wait_for_count(1)
    with pytest.raises(PublishFailed, match=r"not published: .*ActiveMQ"):
        stomp.publish([Outgoing(f"{queue}.out", b"result", headers)], ack=delivery)
    stomp.ack(delivery)  # still in hand, on the same connection: nothing dropped it
    stomp.send(queue, b"sentinel")
    held.wait_for_body(b"sentinel")
    assert held.bodies == [b"in hand", b"sentinel"], "nothing was redelivered"


def test_a_dead_letter_whose_reason_activemq_cannot_read_still_reaches_its_queue(stomp, collector):
    """A reason too long for a header (a handler's long error) cannot go with the copy:
    the message is NACKed instead, and ActiveMQ puts it in the same dead-letter queue."""
    queue = unique("long-reason")
    stomp.send(queue, b"poison")
    stomp.send(queue, b"in hand")
    received = collector()
    stomp.subscribe(queue, received, prefetch=2)
    poison, in_hand = received.wait_for_count(2)
    stomp.nack(poison, requeue=False, reason="x" * 11_000)
    dead = collector(ack_with=stomp)
    stomp.subscribe(dlq_name(queue), dead)
    [letter] = dead.wait_for_count(1)
    assert letter.body == b"poison"
    assert "dead-lettered by ActiveMQ" in letter.headers[DLQ_REASON_HEADER]
    assert stomp.dead_letter_copies_failed == 1
    stomp.ack(in_hand)  # the connection was never dropped
    stomp.send(queue, b"sentinel")
    received.wait_for_body(b"sentinel")
    assert received.bodies == [b"poison", b"in hand", b"sentinel"]


class FailsAtLength(Forward):
    """Forwards, but fails on a ``bad`` payload with an error longer than a header takes
    (the retry and the dead letter carry the error in their headers)."""

    def forward(self, step, payload):
        if payload.get("bad"):
            raise ValueError("x" * 11_000)
        super().forward(step, payload)


def test_a_handlers_long_error_takes_neither_the_connection_nor_other_messages(
    stomp, run_service, collector, caplog
):
    """Its message ends in the dead-letter queue after its deliveries; the messages
    prefetched beside it are forwarded once. (A copy ActiveMQ could not read dropped
    the service's connection on each attempt, returning its neighbours each time, until
    they too were dead-lettered, never having failed.)"""
    source = unique("long-error")
    run_service(FailsAtLength(source, prefetch=3))
    out, dead = collector(ack_with=stomp), collector(ack_with=stomp)
    stomp.subscribe(f"{source}.out", out)
    stomp.subscribe(dlq_name(source), dead)
    recipe = Recipe(
        {"1": {"queue": source, "output": 2}, "2": {"queue": f"{source}.out"}, "start": [[1, {}]]}
    )
    start_recipe(stomp, recipe, [{"bad": True}, *({"n": n} for n in range(5))])
    [letter] = dead.wait_for_count(1, timeout=60)
    assert json.loads(letter.body)["payload"] == {"bad": True}
    forwarded = out.wait_for_count(5, timeout=60)
    assert sorted(json.loads(d.body)["payload"]["n"] for d in forwarded) == list(range(5))
    assert len(dead.deliveries) == 1
    assert not any("lost; reconnecting" in record.getMessage() for record in caplog.records)


def unread_by(port: int) -> int:
    """Bytes sent to the local TCP server on ``port`` that it has not read yet."""
    unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # (a JVM listens on IPv6 too)
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                unread += int(fields[4].split(":")[1], 16)
    return unread


def test_a_write_the_broker_cuts_off_is_one_line_without_a_traceback(activemq, stomp, caplog):
    """The broker dies while a publish is being written: the publish fails in one line
    (stomp.py logged its own error with a traceback first)."""
    queue = unique("cut-off")
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            stomp.publish([Outgoing(queue, b"x" * 20_000_000)]).result(60)
        except Exception as error:
            failures.append(error)

    os.kill(activemq.pid, signal.SIGSTOP)  # reads nothing: the write blocks
    try:
        writer = threading.Thread(target=publish)
        writer.start()
        deadline = time.monotonic() + 30
        while unread_by(activemq.stomp_port) == 0:  # what the broker dies holding: a reset
            assert time.monotonic() < deadline, "the write never reached the broker"
            threading.Event().wait(0.01)
    finally:
        activemq.kill()
    writer.join(30)
    activemq.start()
    [failure] = failures
    assert "the connection was lost" in str(failure)
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"


def test_close_from_a_confirmations_callback_returns_at_once_and_acks_its_input(
    stomp_url, stomp, collector, wait_until
):
    """A confirmation's callback runs where the broker's answers are read: close()
    waiting there for receipts (and for the DISCONNECT's) could get none, and ran each
    wait's whole timeout (25 s). It returns at once; the closing goes on, the input of
    the confirmed publish acked before the goodbye."""
    queue = unique("close-in-callback")
    worker = create_transport(stomp_url)  # timeout=10 s, each wait's
    worker.connect()
    stomp.send(queue, b"input")
    received = collector()
    worker.subscribe(queue, received)
    [delivery] = received.wait_for_count(1)
    took: list[float] = []

    def close(_: object) -> None:
        start = time.monotonic()
        worker.close()
        took.append(time.monotonic() - start)

    worker.publish([Outgoing(f"{queue}.out", b"output")], ack=delivery).add_done_callback(close)
    wait_until(lambda: took and not worker.connected, "the worker closed")
    assert took[0] < 2, f"close() took {took[0]:.1f} s in the callback"
    after = collector(ack_with=stomp)
    stomp.subscribe(queue, after)
    stomp.send(queue, b"sentinel")
    assert after.wait_for_body(b"sentinel") and after.bodies == [b"sentinel"], "acked"
