"""Programs the SQLite broker tests run as separate processes.

    python processes.py hold URL QUEUE PREFETCH     receive, report, never ack
    python processes.py consume URL QUEUE PREFETCH  ack everything, print bodies
    python processes.py produce URL QUEUE PREFIX N  send N messages, wait for confirms

Each prints one line per event on stdout and flushes, so the test can wait
on those lines instead of on the clock.
"""

from __future__ import annotations

import signal
import sys
import threading

from zocalo.transport import Delivery, Outgoing, create_transport


def hold(url: str, queue: str, prefetch: str) -> None:
    transport = create_transport(url)
    transport.connect()

    def inside_handler(delivery: Delivery) -> None:
        print(f"holding {delivery.body.decode()}", flush=True)

    transport.subscribe_broadcast("transient.status", lambda delivery: None)
    transport.subscribe(queue, inside_handler, prefetch=int(prefetch))
    threading.Event().wait()  # blocked "inside the handler" until killed


def consume(url: str, queue: str, prefetch: str) -> None:
    transport = create_transport(url)
    transport.connect()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()

    def record(delivery: Delivery) -> None:
        transport.ack(delivery)
        with lock:
            sys.stdout.write(delivery.body.decode() + "\n")
            sys.stdout.flush()

    transport.subscribe(queue, record, prefetch=int(prefetch))
    print("ready", flush=True)
    stop.wait()
    transport.close()
    print("closed", flush=True)


def produce(url: str, queue: str, prefix: str, count: str) -> None:
    with create_transport(url) as transport:
        pending = [
            transport.publish([Outgoing(queue, f"{prefix}-{number}".encode())])
            for number in range(int(count))
        ]
        for confirmation in pending:
            confirmation.result(60)
    print("produced", flush=True)


if __name__ == "__main__":
    {"hold": hold, "consume": consume, "produce": produce}[sys.argv[1]](*sys.argv[2:])
