"""Programs the SQLite broker tests run as separate processes.

    python processes.py hold URL QUEUE PREFETCH     receive, report, never ack
    python processes.py consume URL QUEUES PREFETCH ack everything, print bodies
                                                    (QUEUES: one or more, comma-separated)
    python processes.py produce URL QUEUE PREFIX N  send N messages, wait for confirms
    python processes.py open_many DIRECTORY         for each NAME read on stdin, connect to
                                                    DIRECTORY/NAME/broker.db and close;
                                                    print "ok" or the error
    python processes.py settle_on_full URL QUEUE N  hold N messages; on "full" on stdin,
                                                    lose the right to write files
                                                    (RLIMIT_FSIZE), ack the first half,
                                                    nack the rest; on "space", get it back

Each prints one line per event on stdout and flushes, so the test can wait
on those lines instead of on the clock.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import threading

from zocalo.errors import PublishFailed, ZocaloError
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

    for name in queue.split(","):
        transport.subscribe(name, record, prefetch=int(prefetch))
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


def open_many(directory: str) -> None:
    for line in sys.stdin:
        try:
            with create_transport(f"sqlite:///{directory}/{line.strip()}/broker.db"):
                pass
        except ZocaloError as error:
            print(f"error: {error}", flush=True)
        else:
            print("ok", flush=True)


class _Spot(logging.Handler):
    """Sets an event when an ERROR record containing ``words`` is logged."""

    def __init__(self, words: str) -> None:
        super().__init__(logging.ERROR)
        self.words = words
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.seen.set()


def settle_on_full(url: str, queue: str, count: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
    failure = _Spot("broker transaction")
    logging.getLogger("zocalo.transport.sqlite").addHandler(failure)
    transport = create_transport(url)
    transport.connect()
    held: list[Delivery] = []
    all_held = threading.Event()

    def inside_handler(delivery: Delivery) -> None:
        again = " again" if delivery.redelivered else ""
        print(f"holding{again} {delivery.body.decode()}", flush=True)
        held.append(delivery)
        if len(held) == int(count):
            all_held.set()

    transport.subscribe(queue, inside_handler, prefetch=int(count))
    all_held.wait()
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert sys.stdin.readline().strip() == "full"
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, unlimited[1]))
    half = len(held) // 2
    for delivery in held[:half]:
        transport.ack(delivery)
    for delivery in held[half:]:
        transport.nack(delivery, requeue=True)
    print("failed" if failure.seen.wait(20) else "nothing failed", flush=True)
    try:
        transport.publish([Outgoing(queue, b"while full")]).result(20)
        print("published while full", flush=True)
    except PublishFailed:
        print("publish refused", flush=True)
    assert sys.stdin.readline().strip() == "space"
    resource.setrlimit(resource.RLIMIT_FSIZE, unlimited)
    print("space", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    programs = {
        "hold": hold,
        "consume": consume,
        "produce": produce,
        "settle_on_full": settle_on_full,
        "open_many": open_many,
    }
    programs[sys.argv[1]](*sys.argv[2:])
