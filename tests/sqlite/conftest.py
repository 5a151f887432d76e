"""Start and always stop the processes the SQLite broker tests need."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

PROGRAM = Path(__file__).with_name("processes.py")


class Process:
    """A child process in its own session whose stdout lines are collected."""

    def __init__(self, *args: str, wrapper: Sequence[str] = ()) -> None:
        self.popen = subprocess.Popen(
            [*wrapper, sys.executable, str(PROGRAM), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.all_lines: list[str] = []
        self.errors: list[str] = []
        self._errors_changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.all_lines.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_errors(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._errors_changed:
                self.errors.append(line.rstrip("\n"))
                self._errors_changed.notify_all()

    def wait_for_stderr(self, text: str, timeout: float = 10.0) -> None:
        """Wait until a line of the program's stderr (its log) contains ``text``."""
        with self._errors_changed:
            found = self._errors_changed.wait_for(
                lambda: any(text in line for line in self.errors), timeout
            )
        assert found, f"{text!r} not in the stderr of {self.popen.args}: {self.errors}"

    def next_line(self, timeout: float = 10.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.popen.args} in {timeout}s") from None
        if line is None:
            raise AssertionError(f"{self.popen.args} exited ({self.popen.wait()})")
        return line

    def tell(self, line: str) -> None:
        """One line on the program's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.signal_group(signal.SIGKILL)
        self.popen.wait(10)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Process]]:
    """``spawn(*args)`` runs processes.py with args; every one is killed at teardown."""
    started: list[Process] = []

    def start(*args: str, wrapper: Sequence[str] = ()) -> Process:
        process = Process(*args, wrapper=wrapper)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/broker.db"
