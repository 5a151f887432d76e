"""The queue in front of GELF: bounded, never blocks the caller, counts what it drops."""

from __future__ import annotations

import fcntl
import io
import logging
import struct
import termios
import threading

import pytest

from zocalo.log_handlers import GELFTCPHandler, NonBlockingHandler
from zocalo.logs import RecipeContextFilter, recipe_context

log = logging.getLogger("zocalo.tests.logs.queue_module")


class Gate(logging.Handler):
    """A target that cannot finish a record until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.entered = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        assert self.open.wait(30), "gate never opened"
        self.records.append(record)


def unread_bytes(connection) -> int:
    """Bytes waiting in a socket's receive buffer (FIONREAD)."""
    raw = fcntl.ioctl(connection.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", raw)[0]


@pytest.mark.timeout(60)
def test_black_holed_tcp_endpoint_does_not_block_the_caller(black_hole, attach) -> None:
    warnings = io.StringIO()
    # A send timeout far beyond the test's: the only way out of a stuck send is the queue.
    target = GELFTCPHandler("127.0.0.1", black_hole.port, timeout=600)
    handler = NonBlockingHandler(
        target, maxsize=50, warn_interval=0, flush_timeout=0.5, stream=warnings
    )
    handler.addFilter(RecipeContextFilter())
    attach(handler)
    payload = "z" * 50_000  # 1000 x 50 KB: far more than any socket buffers hold

    with recipe_context("blocked", 1):
        for number in range(1000):
            log.info("record %d %s", number, payload)

    # Every call returned, while the endpoint provably holds unread data and never reads.
    with black_hole.accepted:
        assert black_hole.accepted.wait_for(lambda: black_hole.connections, 10)
    assert unread_bytes(black_hole.connections[0]) > 0
    assert handler.queue.qsize() <= 50  # bounded
    assert handler.dropped >= 1000 - 50 - 500  # at most the buffers' worth got through
    last_warning = warnings.getvalue().splitlines()[-1]
    assert f"{handler.dropped} log record(s) dropped so far" in last_warning
    assert "GELFTCPHandler" in last_warning

    # Closing gives up on the stuck send instead of waiting for it.
    handler.close()
    assert not handler._listener._thread.is_alive()
    # Logging after close drops (and counts) rather than blocks.
    before = handler.dropped
    log.info("after close")
    assert handler.dropped == before + 1


def test_full_queue_drops_and_counts_without_blocking(attach) -> None:
    gate = Gate()
    warnings = io.StringIO()
    handler = NonBlockingHandler(gate, maxsize=10, warn_interval=3600, stream=warnings)
    attach(handler)
    log.info("first")  # taken by the listener, which then blocks in the gate
    assert gate.entered.wait(10)
    for number in range(100):
        log.info("more %d", number)
    assert handler.queue.qsize() == 10
    assert handler.dropped == 90
    # One warning per interval, naming the count at the time.
    assert warnings.getvalue().splitlines() == [
        "zocalo logging: 1 log record(s) dropped so far: the queue to Gate is full "
        "(is the log endpoint slow or unreachable?)"
    ]
    gate.open.set()
    assert handler.drain(10)
    assert [r.getMessage() for r in gate.records] == ["first"] + [f"more {n}" for n in range(10)]
    handler.close()
    # close() reports the final count once more.
    assert "90 log record(s) dropped" in warnings.getvalue().splitlines()[-1]


def test_context_is_captured_on_the_callers_thread(attach) -> None:
    gate = Gate()
    gate.open.set()
    handler = NonBlockingHandler(gate)
    handler.addFilter(RecipeContextFilter())
    attach(handler)
    with recipe_context("abc", 3):
        log.info("inside")
    log.info("outside")
    assert handler.drain(10)
    stamped = [(r.getMessage(), r.recipe_ID, r.recipe_step) for r in gate.records]
    assert stamped == [("inside", "abc", 3), ("outside", None, None)]
    assert handler.dropped == 0


def test_traceback_survives_the_queue_for_text_formatters(attach) -> None:
    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler = NonBlockingHandler(console)
    attach(handler)
    try:
        raise KeyError("missing")
    except KeyError:
        log.exception("lookup %s failed", "x")
    assert handler.drain(10)
    text = stream.getvalue()
    assert text.startswith("ERROR lookup x failed\nTraceback (most recent call last):")
    assert "KeyError: 'missing'" in text


def test_target_level_is_respected(attach) -> None:
    gate = Gate()
    gate.open.set()
    gate.setLevel(logging.WARNING)
    handler = NonBlockingHandler(gate)
    attach(handler)
    log.info("quiet")
    log.warning("loud")
    assert handler.drain(10)
    assert [r.getMessage() for r in gate.records] == ["loud"]


def test_queue_must_be_bounded() -> None:
    with pytest.raises(ValueError, match="bounded"):
        NonBlockingHandler(logging.NullHandler(), maxsize=0)
