"""zocalo monitor in a real pseudo-terminal, watching a real supervised service."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Terminal:
    """A program running on a pseudo-terminal of a given size, its screen output kept."""

    def __init__(self, command: list[str], rows: int = 40, columns: int = 220) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environment = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns))
        environment.pop("NO_COLOR", None)
        self.process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=environment,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.raw = b""

    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def read_until(self, predicate, what: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not predicate(self.text()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} on the terminal in {timeout}s:\n{self.text()}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the program ended and closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {what}:\n{self.text()}")
                self.raw += chunk
        return self.text()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        os.close(self.master)


def rows_of(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


def test_live_view_shows_a_service_going_idle_then_away(supervised, sqlite_broker):
    terminal = Terminal(
        [sys.executable, "-m", "zocalo.cli.monitor", "--transport", sqlite_broker,
         "--refresh", "0.2"]
    )  # fmt: skip
    try:
        terminal.read_until(lambda t: "zocalo monitor" in t, "the (empty) table")
        service = supervised("monitor_services:Echo")
        terminal.read_until(
            lambda t: any("idle" in row for row in rows_of(t, "Echo")),
            "an idle Echo row",
        )
        mark = len(terminal.raw)
        os.killpg(service.pid, signal.SIGTERM)
        assert service.wait(30) == 0
        terminal.read_until(
            lambda t: "0 service(s)" in ANSI.sub("", terminal.raw[mark:].decode(errors="replace")),
            "the row gone after the service's teardown",
        )
        os.killpg(terminal.process.pid, signal.SIGINT)
        assert terminal.process.wait(15) == 0, "Ctrl-C ends the monitor cleanly"
    finally:
        terminal.close()


def test_once_prints_one_table_and_exits(supervised, sqlite_broker):
    supervised("monitor_services:Echo")
    # Services report every 6 s: listening 7 s sees at least one report, whenever it started.
    result = subprocess.run(
        [sys.executable, "-m", "zocalo.cli.monitor", "--transport", sqlite_broker, "--once", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="250"),
    )
    assert result.returncode == 0, result.stderr
    [row] = rows_of(result.stdout, "Echo")
    assert re.search(r"\b(starting|idle)\b", row), result.stdout
    assert "zocalo " in row and "1 service(s)" in result.stdout
