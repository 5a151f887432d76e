"""Queue depths over STOMP: browsing every queue of our prefix at once.

STOMP cannot ask ActiveMQ which queues it has. The broker's answers elsewhere
need something a facility's broker may not have: JMX over HTTP (Jolokia, in the
web console python-zocalo's tools read), or the statistics broker plugin, whose
replies are map messages that ActiveMQ hands a STOMP client only through its
XStream translators (not shipped by every packaging of the broker: Debian's has
none, and a STOMP client asking for one loses its connection). A *browser*
needs nothing: a subscription with ``browser: true`` on the wildcard
``/queue/<prefix>.>`` is sent a copy of every message of every matching queue,
each naming its queue in ``destination``, then one frame with ``browser: end``;
nothing is consumed or redelivered.

What it cannot see: a queue that holds no message (empty queues are not
listed, whatever their consumers), messages ActiveMQ's scheduler still holds
(delayed), and more than the broker pages into memory for a browser per queue
(the destination policy's ``maxBrowsePageSize``, 400 by default: a deeper queue
is reported with about that many). Messages delivered and not yet acknowledged
are seen, and counted as waiting.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from stomp.utils import Frame

from zocalo.errors import ConnectionFailed, TransportError
from zocalo.transport.stomp.connection import Link

#: How often a browse waiting for its end looks at the connection.
_TICK = 0.1


@dataclass(eq=False)
class _Browse:
    counts: Counter[str] = field(default_factory=Counter)
    ended: threading.Event = field(default_factory=threading.Event)


class Browsers:
    """The browses in progress on one connection, by STOMP subscription id."""

    def __init__(self) -> None:
        self._open: dict[str, _Browse] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def on_message(self, frame: Frame) -> bool:
        """On the receiver thread: count a browse's frame; False if it is not one."""
        with self._lock:
            browse = self._open.get(frame.headers.get("subscription", ""))
        if browse is None:
            return False
        if frame.headers.get("browser") == "end":
            browse.ended.set()
        else:
            browse.counts[frame.headers.get("destination", "")] += 1
        return True

    def count(self, link: Link, destinations: Sequence[str], timeout: float) -> Counter[str]:
        """Messages per queue (by STOMP destination) in the queues ``destinations`` match
        (wildcards allowed), browsed at once; TransportError if the broker does not finish
        within ``timeout`` seconds."""
        browses = {f"browse-{next(self._ids)}": _Browse() for _ in destinations}
        with self._lock:
            self._open.update(browses)
        try:
            for (stomp_id, _), destination in zip(browses.items(), destinations, strict=True):
                headers = {"id": stomp_id, "destination": destination, "ack": "auto"}
                link.call("SUBSCRIBE", {**headers, "browser": "true"}, timeout)
            deadline = time.monotonic() + timeout
            for browse in browses.values():
                while not browse.ended.wait(_TICK):
                    link.require_open()
                    if time.monotonic() > deadline:
                        raise TransportError(
                            f"{link.safe_url}: browsing {', '.join(destinations)} did not "
                            f"finish within {timeout:g} s"
                        )
            total: Counter[str] = Counter()
            for browse in browses.values():
                total.update(browse.counts)
            return total
        finally:
            with self._lock:
                for stomp_id in browses:
                    self._open.pop(stomp_id, None)
            for stomp_id in browses:  # a finished browser is gone already: harmless
                try:
                    link.write([("UNSUBSCRIBE", {"id": stomp_id}, b"")])
                except ConnectionFailed:
                    break
