"""What ActiveMQ's queues hold, over STOMP: browsing them.

STOMP cannot ask ActiveMQ which queues it has. The broker's answers elsewhere
need something a facility's broker may not have: JMX over HTTP (Jolokia, in the
web console python-zocalo's tools read), or the statistics broker plugin, whose
replies are map messages that ActiveMQ hands a STOMP client only through its
XStream translators (not shipped by every packaging of the broker: Debian's has
none, and the broker then drops the connection the reply was for). A *browser*
needs nothing: a subscription with ``browser: true`` is sent a copy of every
message of the queue, then one frame with ``browser: end``; nothing is consumed
or redelivered.

A browser sees at most the destination policy's ``maxBrowsePageSize`` messages
(400 by default), and a wildcard browser that many in all, from whichever queues
come first. So the queues are found in rounds: a wildcard browser over
``/queue/<prefix>.>`` names some (each frame names its queue in
``destination``), the next excludes those by selector (``JMSDestination NOT
IN (...)``), until one finds no other; then each queue is counted by a browser
of its own, all at once.

What it cannot see: a queue that holds no message (whatever its consumers),
messages ActiveMQ's scheduler still holds (delayed), and beyond the browse page
of a queue (a deeper queue is reported with about that many). Messages
delivered and not yet acknowledged are seen, and counted.
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
from zocalo.transport.stomp.flavour import MAX_HEADER_LINE
from zocalo.transport.stomp.headers import too_long

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

    def depths(self, link: Link, wildcard: str, timeout: float) -> Counter[str]:
        """Messages per queue (by STOMP destination) in every queue ``wildcard`` matches
        that holds any (see the module docstring); TransportError if the broker does
        not finish within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        found: set[str] = set()
        while True:
            selector = _excluding(found)
            # ActiveMQ drops the connection of a longer header line (as it goes, escaped).
            if selector is not None and too_long({"selector": selector}, MAX_HEADER_LINE):
                raise TransportError(
                    f"{link.safe_url}: more queues hold messages under {wildcard} than one "
                    f"browse can tell apart ({len(found)} found so far)"
                )
            seen = self.count(link, [(wildcard, selector)], deadline)
            new = set(seen) - found
            if not new:
                break
            found |= new
        return self.count(link, [(destination, None) for destination in sorted(found)], deadline)

    def count(
        self, link: Link, browsers: Sequence[tuple[str, str | None]], deadline: float
    ) -> Counter[str]:
        """Messages per queue seen by ``browsers`` (destination, selector), all at once;
        TransportError if they do not finish by ``deadline`` (``time.monotonic()``)."""
        browses = {f"browse-{next(self._ids)}": _Browse() for _ in browsers}
        with self._lock:
            self._open.update(browses)
        try:
            for stomp_id, (destination, selector) in zip(browses, browsers, strict=True):
                headers = {"id": stomp_id, "destination": destination, "ack": "auto"}
                if selector is not None:
                    headers["selector"] = selector
                link.call("SUBSCRIBE", {**headers, "browser": "true"}, _left(deadline))
            for browse in browses.values():
                while not browse.ended.wait(_TICK):
                    link.require_open()
                    if time.monotonic() > deadline:
                        names = ", ".join(destination for destination, _ in browsers)
                        raise TransportError(
                            f"{link.safe_url}: browsing {names} did not finish in time"
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


def _excluding(destinations: set[str]) -> str | None:
    """A selector leaving out the messages of the queues ``destinations`` (``/queue/X``)."""
    if not destinations:
        return None
    names = ", ".join(
        "'queue://{}'".format(destination.removeprefix("/queue/").replace("'", "''"))
        for destination in sorted(destinations)
    )
    return f"JMSDestination NOT IN ({names})"


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())
