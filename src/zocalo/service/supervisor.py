"""The supervisor (python-workflows' "frontend"): runs a service in a child process.

A facility runs about a hundred services, so an idle one must cost little. The
supervisor is exec'd by ``zocalo.service`` as a fresh interpreter with a dozen
standard-library modules, holds no broker connection and runs no thread of its
own: one loop waits on signals and its child. That makes ``fork`` safe: the
child shares the interpreter's pages and costs no interpreter start. The child
imports the runner, the broker client and the service itself (pages a child
imports are its own; inherited pages it touches are copied in both processes),
so a restart also loads the service's current code.

The child (:mod:`zocalo.service.worker`) holds the broker connections: it runs
the service, broadcasts the status on ``transient.status`` and obeys shutdown
commands on ``command``. After a crash the supervisor waits (``restart=True``,
growing delays) and, for delays of a second or more, forks a stand-in that
broadcasts the error status and still obeys shutdown commands meanwhile.

Commands reach the children through a queue of this supervisor's own, bound to
the ``command`` topic (``Transport.bind_queue``) and kept by the broker between
children: a command broadcast while no child listens (a crashed worker not yet
replaced, a short restart delay, a stand-in gone and the next worker still
starting) waits there for the next child, which obeys it and only then
acknowledges it. The broker drops the queue ``COMMANDS_KEPT_FOR`` after its
last consumer, so a supervisor killed outright leaves nothing behind for long.

SIGTERM/SIGINT stop the child cleanly: the message in hand is finished,
prefetched ones go back to the queue. A shutdown command heard by the child
takes the same path: the child reports it on a second pipe, and we stop it as
for SIGTERM (killed after ``stop_timeout`` if its handler hangs, the message in
hand unacknowledged, so it returns to its queue).

The child reads a pipe from us; if we die, however we die, it sees
end-of-file and stops, so no orphan keeps messages unacknowledged.

A worker is *replaced*, without counting a crash and with or without
``--restart``, when it exits ``RECYCLE`` (its memory grew past
``--max-memory``) or when a handler with a ``time_limit`` overruns it: the
worker reports each such message as it starts, and we kill the worker at
the deadline (from outside, since a handler stuck in C code holding the GIL
would stop any thread of its own).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import select
import signal
import sys
import time
from typing import Any, NoReturn

from zocalo.logs import apply_logging
from zocalo.service.commands import COMMAND_QUEUE_PREFIX
from zocalo.service.status import (
    CANNOT_LOAD,
    RECYCLE,
    SHUTDOWN_COMMANDED,
    STOP_SIGNALS,
    Identity,
    host_id,
)
from zocalo.service.supervisor_settings import SupervisorSettings

log = logging.getLogger("zocalo.service.supervisor")

#: A worker that ran at least this long before exiting counts as healthy.
HEALTHY_RUN = 10.0
MAX_BACKOFF = 60.0
#: Consecutive quick crashes after which the service is reported as crash-looping.
CRASH_LOOP = 5
#: Restart delays at least this long get a stand-in child (status and commands).
STAND_IN_DELAY = 1.0
#: How long a stand-in may take to leave when its delay is over.
STAND_IN_STOP = 5.0
#: The environment variable that hands the settings to an exec'd supervisor.
SETTINGS_VARIABLE = "ZOCALO_SUPERVISOR_SETTINGS"
#: What an exec'd supervisor imports before it runs ``main()``; later it loads only
#: the log handlers its logging plan names (the worker imports in its own process).
#: ``tests/service/test_supervisor_footprint.py`` keeps this small.
ENTRY_IMPORT = "from zocalo.service.supervisor import main"


def backoff(quick_crashes: int) -> float:
    """Seconds to wait before restart number ``quick_crashes`` in a row."""
    return 0.0 if quick_crashes <= 0 else min(MAX_BACKOFF, 0.1 * 2 ** (quick_crashes - 1))


def exit_status(wait_status: int) -> int:
    """A child's exit code, or ``-signal`` if a signal ended it (as ``subprocess`` does)."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


class Supervisor:
    """Run, watch and restart one service's child process."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        self.host = host_id()
        self.started_at = time.monotonic()
        self.restarts = 0
        # Unique to this supervisor's life (a later one may get the same pid).
        self.commands = f"{COMMAND_QUEUE_PREFIX}{self.host}.{os.urandom(4).hex()}"
        self._stop_reason: str | None = None
        self._stop_announced = False
        self._wake_read = self._wake_write = -1

    # -- control -------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        """Stop the child and return from :meth:`run`. Safe in a signal handler: it only
        records the reason (logging there could re-enter a log handler's lock)."""
        if self._stop_reason is None:
            self._stop_reason = why

    def _announce_stop(self) -> None:
        if not self._stop_announced:
            self._stop_announced = True
            log.info("stopping service %s: %s", self.settings.service, self._stop_reason)

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def run(self) -> int:
        """Supervise until stopped; the exit status for the command line.

        (The command line checks the broker first, so a wrong URL, bad credentials
        or a missing vhost are a clear error there rather than a restart loop.)
        """
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        previous = self._install_signals()
        try:
            return self._supervise()
        finally:
            self._restore_signals(previous)
            for fd in (self._wake_read, self._wake_write):
                os.close(fd)

    def _supervise(self) -> int:
        quick_crashes = 0
        while not self.stopping:
            began = time.monotonic()
            code = self._run_child("run_service")
            if self.stopping or code == 0:
                return 0 if self.stopping else code
            if code == RECYCLE:  # replaced on purpose: no crash, no delay
                self.restarts += 1
                continue
            if code == CANNOT_LOAD:
                log.error(
                    "service %s cannot be loaded (see above); not restarting it",
                    self.settings.service,
                )
                return code
            ran_for = time.monotonic() - began
            quick_crashes = quick_crashes + 1 if ran_for < HEALTHY_RUN else 1
            if not self.settings.restart:
                log.error("service %s exited with status %s", self.settings.service, code)
                return code or 1
            delay = backoff(quick_crashes)
            level = logging.ERROR if quick_crashes >= CRASH_LOOP else logging.WARNING
            log.log(
                level,
                "service %s exited with status %s after %.1f s (%d quick crash(es)%s); "
                "restarting in %.1f s",
                self.settings.service,
                code,
                ran_for,
                quick_crashes,
                ", crash-looping" if quick_crashes >= CRASH_LOOP else "",
                delay,
            )
            self.restarts += 1
            if self._wait_before_restart(delay):
                return 0
        return 0

    def _wait_before_restart(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if a stop (signal or shutdown command) came meanwhile."""
        until = time.monotonic() + delay
        if delay >= STAND_IN_DELAY:
            code = self._run_child("run_stand_in", until=until)
            if code == SHUTDOWN_COMMANDED:
                self.request_stop("shutdown command during the restart delay")
                self._announce_stop()
            elif not self.stopping and time.monotonic() < until:
                self._wait(until)  # the stand-in had no broker to speak to
        else:
            self._wait(until)
        return self.stopping

    # -- one child -------------------------------------------------------------
    def _run_child(self, role: str, until: float | None = None) -> int:
        """Fork a child running ``role`` (of :mod:`zocalo.service.worker`) and wait for it.

        Returns its exit status.

        The child is told to stop when we stop, or at ``until``; it is killed if it
        has not left ``stop_timeout`` seconds later.
        """
        identity = Identity(
            self.host, os.getpid(), self.started_at, self.restarts, until, self.commands
        )
        commands_read, commands_write = os.pipe()
        reports = ChildReports()
        # Stop signals wait until the child has its own handlers (or the parent its fork).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        # The collectors of both processes then leave the shared pages alone. (Never
        # unfrozen: the supervisor makes next to no cyclic garbage, and a collection
        # in it would copy every page it shares with the child.)
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as error:  # EAGAIN, ENOMEM: a failed start, like a crash
            log.error("service %s: cannot start a process: %s", self.settings.service, error)
            for fd in (commands_read, commands_write):
                os.close(fd)
            reports.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            return 1
        if pid == 0:  # the child: never returns
            _child(
                role,
                self.settings,
                identity,
                commands_read,
                reports.write_fd,
                blocked,
                (commands_write, reports.read_fd, self._wake_read, self._wake_write),
            )
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(commands_read)
        reports.forked()
        told_at: float | None = None
        grace = self.settings.stop_timeout if until is None else STAND_IN_STOP
        in_hand: dict[str, Any] | None = None  # a message whose handler has a time limit
        replaced = False
        try:
            while True:
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return RECYCLE if replaced else exit_status(wait_status)
                now = time.monotonic()
                if in_hand is not None and told_at is None and now >= in_hand["deadline"]:
                    log.error(
                        "time limit: handler %s took more than %g s on %s; replacing the "
                        "worker, and the message, not acknowledged, returns to its queue",
                        in_hand.get("handler"),
                        in_hand.get("limit"),
                        in_hand.get("message"),
                        extra={
                            "recipe_ID": in_hand.get("recipe"),
                            "recipe_step": in_hand.get("step"),
                        },
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    replaced = True
                    told_at = float("inf")  # killed: only wait for it now
                if told_at is None and (self.stopping or (until is not None and now >= until)):
                    if self.stopping:
                        self._announce_stop()
                    _tell_stop(commands_write)
                    told_at = now
                if told_at is not None and now - told_at > grace:
                    if until is None:  # a stand-in holds no messages: no news if killed
                        log.error(
                            "service %s did not stop within %.0f s; killing it",
                            self.settings.service,
                            grace,
                        )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    told_at = float("inf")  # killed: only wait for it now
                pause = 1.0 if until is None or told_at is not None else until - now
                if in_hand is not None and told_at is None:
                    pause = min(pause, in_hand["deadline"] - now)
                for event in self._sleep(min(1.0, max(0.0, pause)), reports):
                    in_hand = self._on_report(event, in_hand)
        finally:
            os.close(commands_write)
            reports.close()

    def _on_report(self, event: dict[str, Any], in_hand: dict[str, Any] | None) -> Any:
        """Act on one report from the child; returns the time-limited message in hand."""
        kind = event.get("event")
        if kind == "shutdown":
            self.request_stop(str(event.get("reason", "shutdown command")))
        elif kind == "in_hand":
            try:
                deadline = float(event["started"]) + float(event["limit"])
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring an unreadable report from the worker: %r", event)
                return in_hand
            return {**event, "deadline": deadline}
        elif kind == "done":
            return None
        return in_hand

    # -- waiting without threads ---------------------------------------------------
    def _wait(self, until: float) -> None:
        while not self.stopping and (remaining := until - time.monotonic()) > 0:
            self._sleep(remaining)
        if self.stopping:
            self._announce_stop()

    def _sleep(self, seconds: float, reports: ChildReports | None = None) -> list[dict[str, Any]]:
        """Sleep until a signal (SIGCHLD, SIGTERM, ...) or a report arrives, or ``seconds``
        pass; returns the child's reports that arrived."""
        listening = reports is not None and not reports.ended
        watched = [self._wake_read]
        if reports is not None and listening:
            watched.append(reports.read_fd)
        readable, _, _ = select.select(watched, [], [], seconds)
        if self._wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 512):
                    pass
        if reports is not None and listening and reports.read_fd in readable:
            return reports.read()
        return []

    def _install_signals(self) -> dict[int, Any]:
        def on_stop_signal(signum: int, frame: Any) -> None:
            self.request_stop(signal.Signals(signum).name)

        previous: dict[int, Any] = {signal.SIGCHLD: signal.signal(signal.SIGCHLD, _ignore)}
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_stop_signal)
        previous[0] = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(0))
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ChildReports:
    """The pipe on which a child reports to us: one JSON object per line.

    ``{"event": "shutdown", "reason": ...}``: it heard a shutdown command (we stop);
    ``{"event": "in_hand", "message", "handler", "limit", "started"}`` and
    ``{"event": "done"}``: a message of a handler with a time limit.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._buffer = b""
        #: The child's end is closed (it exited): nothing more to read.
        self.ended = False

    def forked(self) -> None:
        """In the parent, after the fork: the write end is the child's alone."""
        os.close(self.write_fd)
        self.write_fd = -1
        os.set_blocking(self.read_fd, False)

    def read(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self._buffer += chunk
            self.ended = True
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                events.append(event)
            else:
                log.warning("ignoring an unreadable report from the worker: %r", line[:200])
        return events

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


def _child(
    role: str,
    settings: SupervisorSettings,
    identity: Identity,
    commands: int,
    reports: int,
    signal_mask: set[int | signal.Signals],
    supervisor_fds: tuple[int, ...],
) -> NoReturn:
    """The forked child: drop the supervisor's signals and fds, import, run ``role``.

    Importing the runner, the broker client and the service in the child, not in
    the supervisor, keeps the supervisor small: pages a child imports are its own,
    while pages it inherits and touches become private copies in both processes.
    """
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_DFL)
        for fd in supervisor_fds:
            os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        from zocalo.service import worker

        worker.child_main(getattr(worker, role), settings, identity, commands, reports)
    except BaseException:  # only the lines above can fail: child_main never returns
        log.exception("service %s: its process could not start", settings.service)
        logging.shutdown()
    os._exit(1)


def _ignore(signum: int, frame: Any) -> None:
    """SIGCHLD needs a handler of its own for the wake-up pipe to hear it."""


def _tell_stop(commands: int) -> None:
    with contextlib.suppress(OSError):
        os.write(commands, b'{"command": "stop"}\n')


def supervise(settings: SupervisorSettings) -> int:
    """Run a supervisor in this (main) thread; SIGTERM/SIGINT stop it cleanly."""
    return Supervisor(settings).run()


def exec_supervisor(settings: SupervisorSettings) -> NoReturn:
    """Replace this process (same pid) with a fresh, small supervisor for ``settings``.

    The command line has loaded click, the site configuration and the broker's
    client to check everything; none of that needs to stay resident for the
    service's lifetime. Settings travel in the environment, as the broker URL's
    password must not appear on a command line.
    """
    logging.shutdown()  # flush (and close) this process's handlers, GELF included
    environment = {**os.environ, SETTINGS_VARIABLE: settings.to_json()}
    code = f"{ENTRY_IMPORT}; main()"
    # -P: no working directory on sys.path (a select.py there must not shadow the
    # standard library); the trailing words only name the service in ps and top.
    argv = [sys.executable, "-P", "-c", code, "zocalo.service", settings.service]
    os.execve(sys.executable, argv, environment)


def main() -> NoReturn:
    """Entry point of an exec'd supervisor."""
    settings = SupervisorSettings.from_json(os.environ.pop(SETTINGS_VARIABLE))
    apply_logging(settings.logging)
    code = supervise(settings)
    logging.shutdown()
    sys.exit(code if code >= 0 else 128 - code)  # killed by signal n: 128+n, as shells say
