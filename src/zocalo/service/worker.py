"""The supervised side of a service: the forked child that runs it and speaks for it.

The supervisor forks this child (it holds no broker connection and runs no
thread of its own, so the fork is safe) and the child imports the runner, the
broker client and the service itself. The child holds the broker connections:
one runs the service, the other broadcasts the status and hears shutdown
commands. While the supervisor waits to restart a crashed service, a
*stand-in* child broadcasts the error status and still obeys shutdown commands
(exit status ``SHUTDOWN_COMMANDED`` when one came).

The child reads a pipe from the supervisor: a ``{"command": "stop"}`` line asks
it to stop, and end-of-file means the supervisor died (kill -9, the OOM
killer): the child then stops too, so its prefetched messages go back to the
queue instead of being held by an orphan. It writes a second pipe back
(:class:`SupervisorLink`): a shutdown command it heard (the supervisor then
stops it as for SIGTERM, killing it after ``stop_timeout`` if a handler
hangs), and each message of a handler with a time limit (the supervisor
kills the worker at the deadline).

Exit status: 0 stopped as asked (or by a shutdown command), ``CANNOT_LOAD`` the
service cannot be loaded, ``RECYCLE`` replace me (``--max-memory``), anything
else a failure worth a restart.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, NoReturn

from zocalo.config import ConfigurationError, load_configuration
from zocalo.errors import ZocaloError
from zocalo.logs import apply_logging
from zocalo.service.discovery import ServiceNotFound, load_service
from zocalo.service.middleware.memory_limit import MemoryLimit
from zocalo.service.middleware.time_limit import TimeLimit
from zocalo.service.runner import RunnerSettings, ServiceRunner
from zocalo.service.status import (
    CANNOT_LOAD,
    RECYCLE,
    SHUTDOWN_COMMANDED,
    STOP_SIGNALS,
    Identity,
    Status,
    StatusBroadcaster,
)
from zocalo.transport.registry import create_transport

if TYPE_CHECKING:
    from zocalo.service.supervisor_settings import RunnerHook, SupervisorSettings

log = logging.getLogger("zocalo.service.worker")


class SupervisorLink:
    """The child's end of the report pipe: one JSON object per line, each written whole.

    (Lines are far below ``PIPE_BUF``, so writes from different threads never mix.)
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    #: Longest text of one detail: details may come from a message (its recipe ID),
    #: and a whole line must stay below ``PIPE_BUF`` to arrive whole and unmixed.
    DETAIL_CHARACTERS = 300

    def report(self, event: str, **details: Any) -> None:
        shortened = {
            key: value
            if value is None or isinstance(value, int | float)
            else str(value)[: self.DETAIL_CHARACTERS]
            for key, value in details.items()
        }
        line = json.dumps({"event": event, **shortened}, default=str) + "\n"
        with contextlib.suppress(OSError):  # the supervisor is gone: the pipe says so too
            os.write(self.fd, line.encode())


def child_main(
    role: Callable[[SupervisorSettings, Identity, IO[str], SupervisorLink], int],
    settings: SupervisorSettings,
    identity: Identity,
    commands_fd: int,
    reports_fd: int,
) -> NoReturn:
    """Entry point of a freshly forked child: run ``role``, then leave through ``os._exit``.

    ``os._exit`` keeps the child out of the supervisor's code below it on the stack;
    before it, the service's own ``atexit`` handlers run and every log handler is
    flushed, as at the end of any program. (The supervisor's inherited ``atexit``
    handlers are dropped first: they are not the child's to run.)
    """
    atexit._clear()
    code = 1
    try:
        setup = apply_logging(settings.logging)  # fresh handlers: none shared with us
        try:
            # Never closed here: a thread blocks reading it, and closing would wait
            # for that thread; os._exit closes it.
            commands = os.fdopen(commands_fd, "r")
            code = role(settings, identity, commands, SupervisorLink(reports_fd))
        except BaseException:  # logged while the site's handlers are still attached
            log.exception("service %s: its process failed", settings.service)
        finally:
            setup.close()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
            logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream cannot report itself
                stream.flush()
        os._exit(code)


def run_service(
    settings: SupervisorSettings, identity: Identity, commands: IO[str], link: SupervisorLink
) -> int:
    """Run the service until told to stop; the exit status for the supervisor.

    Status and commands travel on a connection of their own, so a shutdown
    command is not queued behind the deliveries the service has prefetched.
    """
    try:
        service_class = load_service(settings.service)
    except ServiceNotFound as error:
        log.error("%s", error)
        return CANNOT_LOAD
    service = service_class()
    if settings.site_config is not None:
        try:
            service.site_config = load_configuration(
                settings.site_config, environments=settings.site_environments
            )
        except ConfigurationError as error:
            log.error("service %s: %s", service_class.name, error)
            return CANNOT_LOAD
    runner = ServiceRunner(
        service,
        create_transport(settings.transport),
        RunnerSettings(
            max_attempts=settings.max_attempts,
            stop_timeout=settings.stop_timeout,
            max_hops=settings.max_hops or RunnerSettings.max_hops,
        ),
    )
    # The supervisor enforces time limits from outside; it hears of each limited message.
    runner.add_middleware(TimeLimit(link.report))
    recycling = MemoryLimit(settings.max_memory) if settings.max_memory is not None else None
    if recycling is not None:
        runner.add_middleware(recycling)
    _attach_hooks(runner, settings.runner_hooks)  # e.g. Prometheus metrics, from this process

    def read() -> tuple[Status, dict[str, Any]]:
        if not runner.started.is_set():
            status = Status.STARTING
        elif runner.stopping:
            status = Status.SHUTDOWN
        else:
            status = Status.PROCESSING if runner.processing else Status.IDLE
        stats: dict[str, Any] = runner.stats.snapshot()
        note = runner.service.status_note()
        if note:
            stats["note"] = note
        return status, stats

    def on_shutdown(reason: str) -> None:
        link.report("shutdown", reason=reason)  # the supervisor announces it and sees it done
        runner.request_stop()

    control = create_transport(settings.transport)
    status = StatusBroadcaster(
        control,
        identity,
        service=service_class.name,
        service_class=service_class.__name__,
        read=read,
        on_shutdown=on_shutdown,
        interval=settings.status_interval,
        started_as=settings.service,
    )
    _obey_signals(runner.request_stop)
    _watch_supervisor(commands, runner.request_stop, settings.stop_timeout)
    failed = False
    try:
        control.connect()
        status.start()
        runner.run()
    except Exception as error:
        failed = True
        if isinstance(error, ZocaloError):  # explained where it happened: one line here
            log.error("service %s stops with an error: %s", service_class.name, error)
        else:
            log.exception("service %s failed", service_class.name)
        if not runner.started.is_set():  # run() never reached its own shutdown
            runner.transport.abort()
    finally:
        status.finish(Status.TEARDOWN if runner.stopping else Status.ERROR)
        with contextlib.suppress(ZocaloError):
            control.close()
    if recycling is not None and recycling.recycled.is_set():
        return RECYCLE
    # Told to stop (signal, supervisor, shutdown command): a failure while stopping
    # must not turn into a restart.
    return 1 if failed and not runner.stopping else 0


def _attach_hooks(runner: ServiceRunner, hooks: list[RunnerHook]) -> None:
    """Call each ``module:function`` named in the settings with the runner (to add
    its middleware).

    The caller names them (the command line, for ``--metrics-port``), so that the
    service layer never imports what sits above it (``zocalo.monitor``).
    """
    for name, options in hooks:
        module, _, function = name.partition(":")
        getattr(importlib.import_module(module), function)(runner, **options)


def run_stand_in(
    settings: SupervisorSettings, identity: Identity, commands: IO[str], link: SupervisorLink
) -> int:
    """Broadcast the error status during a restart delay; stop on a shutdown command.

    Exits ``SHUTDOWN_COMMANDED`` for a shutdown command, 0 when told to stop.
    """
    done = threading.Event()
    commanded = threading.Event()
    transport = create_transport(settings.transport)

    def on_shutdown(reason: str) -> None:
        link.report("shutdown", reason=reason)
        commanded.set()
        done.set()

    status = StatusBroadcaster(
        transport,
        identity,
        service=settings.service,
        service_class=settings.service_class,
        read=lambda: (Status.ERROR, {}),
        on_shutdown=on_shutdown,
        interval=settings.status_interval,
        started_as=settings.service,
    )
    _obey_signals(done.set)
    _watch_supervisor(commands, done.set, settings.stop_timeout)
    try:
        transport.connect()
    except ZocaloError as error:  # the restart will say it again, with the details
        log.warning("cannot report the status while waiting to restart: %s", error)
        return 1
    try:
        status.start()
        done.wait()
    finally:
        status.finish(Status.ERROR)
        transport.close()
    return SHUTDOWN_COMMANDED if commanded.is_set() else 0


def _obey_signals(stop: Callable[[], None]) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        stop()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)


def _watch_supervisor(commands: IO[str], stop: Callable[[], None], grace: float) -> None:
    """Stop when the supervisor says so, or when its end of the pipe closes."""

    def watch() -> None:
        for line in commands:
            try:
                command = json.loads(line).get("command")
            except (ValueError, AttributeError):
                log.warning("ignoring unreadable command from the supervisor: %r", line)
                continue
            if command == "stop":
                stop()
        log.warning("supervisor went away; stopping so prefetched messages return to the queue")
        stop()
        # A handler that never returns must not keep an orphan alive forever.
        timer = threading.Timer(grace, lambda: os._exit(3))
        timer.daemon = True
        timer.start()

    threading.Thread(target=watch, name="zocalo-supervisor-pipe", daemon=True).start()
