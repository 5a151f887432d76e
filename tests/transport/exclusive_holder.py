"""A process holding a queue exclusively, for the tests to kill -9.

    python exclusive_holder.py URL QUEUE    subscribe exclusively (prefetch 10), print
                                            "holding BODY" per delivery, never ack

Each line is flushed, so the test waits on lines instead of on the clock.
"""

from __future__ import annotations

import sys
import threading

from zocalo.transport import Delivery, create_transport


def main(url: str, queue: str) -> None:
    transport = create_transport(url)
    transport.connect()

    def inside_handler(delivery: Delivery) -> None:
        print(f"holding {delivery.body.decode()}", flush=True)

    transport.subscribe(queue, inside_handler, prefetch=10, exclusive=True)
    print("subscribed", flush=True)
    threading.Event().wait()  # "inside the handler" until killed


if __name__ == "__main__":
    main(*sys.argv[1:])
