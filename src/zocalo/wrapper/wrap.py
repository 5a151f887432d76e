"""The wrap runner: what ``zocalo.wrap`` does with a wrapper, in python-zocalo's order.

1. the wrapper gets its recipe step (from the recipe-wrapper file) and a status
   broadcaster, which announces it at once and then every 3 s and on changes;
2. ``prepare("Starting processing")``; status PROCESSING;
3. ``run()``: True -> ``success``, False -> ``failure``, an exception ->
   ``failure(<its text>)`` and status ERROR;
4. ``done(...)``; status END (unless ERROR); the broadcaster stops.

A ``zocalo cancel`` of the wrapper's recipe (:mod:`zocalo.recipe.cancel`) stops
it (:meth:`~zocalo.wrapper.base.BaseWrapper.stop`), and it reports nothing more.
Cancellations the broker kept are read before the wrapper starts (a job that
waited in a cluster queue may start after ``zocalo cancel``): a wrapper whose
recipe is cancelled already runs nothing and reports nothing. On a broker that
keeps no broadcasts (ActiveMQ) only the cancellations made while it runs stop it.

Wrappers are found by name in the ``zocalo.wrappers`` entry point group (each
names a :class:`~zocalo.wrapper.base.BaseWrapper` subclass), as in python-zocalo.
"""

from __future__ import annotations

import logging
import signal
import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from zocalo.errors import UnsupportedFeature, ZocaloError
from zocalo.logs import recipe_context
from zocalo.recipe.cancel import Cancellation, CancellationListener
from zocalo.service.status import Status
from zocalo.transport.base import Transport
from zocalo.wrapper.base import BaseWrapper
from zocalo.wrapper.live_step import LiveRecipeWrapper
from zocalo.wrapper.status import WRAPPER_STATUS_INTERVAL, WrapperStatus

log = logging.getLogger("zocalo.wrap")

WRAPPER_GROUP = "zocalo.wrappers"
#: What zocalo.wrap reports when a wrapper leaves no report of its own (python-zocalo's).
STARTING_TEXT = "Starting processing"
FINISHED_TEXT = "Finished processing"
FAILED_TEXT = "Processing failed"


class WrapperNotFound(ZocaloError, LookupError):
    """No wrapper of that name, or it cannot be loaded."""


def available_wrappers() -> dict[str, EntryPoint]:
    """Every wrapper registered in the ``zocalo.wrappers`` group, by name."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=WRAPPER_GROUP):
        found.setdefault(entry.name, entry)
    return found


def load_wrapper(name: str) -> type[BaseWrapper]:
    """The wrapper class registered as ``name``."""
    wrappers = available_wrappers()
    entry = wrappers.get(name)
    if entry is None:
        known = ", ".join(sorted(wrappers)) or "none installed"
        raise WrapperNotFound(f"no wrapper {name!r}; known wrappers: {known}")
    try:
        wrapper_class = entry.load()
    except Exception as error:  # a broken install: one line, not a traceback
        raise WrapperNotFound(
            f"wrapper {name!r} ({entry.value}) cannot be loaded: {type(error).__name__}: {error}"
        ) from None
    if not (isinstance(wrapper_class, type) and issubclass(wrapper_class, BaseWrapper)):
        raise WrapperNotFound(f"wrapper {name!r} ({entry.value}) is not a BaseWrapper subclass")
    return wrapper_class


def task_name(name: str, recipe_wrapper: LiveRecipeWrapper | None) -> str:
    """The wrapper's name, plus the step's ``wrapper.task_information`` if it has one."""
    if recipe_wrapper is None:
        return name
    settings = recipe_wrapper.recipe_step.get("wrapper")
    information = settings.get("task_information") if isinstance(settings, dict) else None
    return f"{name} ({information})" if information else name


def run_wrapper(
    wrapper: BaseWrapper,
    transport: Transport,
    *,
    name: str,
    recipe_wrapper: LiveRecipeWrapper | None = None,
    status_interval: float = WRAPPER_STATUS_INTERVAL,
) -> Status:
    """Run ``wrapper`` to its end on a connected ``transport``; returns END or ERROR.

    Every outcome of ``run()`` is reported down the recipe; only a failure to
    report (the broker refusing a send) escapes, as the error it is.
    """
    if recipe_wrapper is not None:
        wrapper.set_recipe_wrapper(recipe_wrapper)
    status = WrapperStatus(transport, task_name(name, recipe_wrapper), interval=status_interval)
    if recipe_wrapper is not None:
        status.set_static_status_field("recipe_ID", recipe_wrapper.recipe_id)
    wrapper.status_thread = status
    recipe_id = recipe_wrapper.recipe_id if recipe_wrapper else None
    pointer = recipe_wrapper.recipe_pointer if recipe_wrapper else None
    listener, cancelled = _stop_when_cancelled(wrapper, transport, recipe_id)
    if cancelled.is_set():
        with recipe_context(recipe_id, pointer):
            log.warning("wrapper %s: recipe %s was cancelled before it started", name, recipe_id)
        listener.stop()
        return Status.END
    status.start()
    final = Status.ERROR
    try:
        with recipe_context(recipe_id, pointer):
            wrapper.prepare(STARTING_TEXT)
            status.set_status(Status.PROCESSING)
            log.info("wrapper %s: setup complete, starting processing", name)
            final = _run(wrapper, name, cancelled)
            if not cancelled.is_set():
                wrapper.done(_report(wrapper, FINISHED_TEXT))
    finally:
        status.set_status(final)
        status.shutdown()
        listener.stop()
    return final


def _stop_when_cancelled(
    wrapper: BaseWrapper, transport: Transport, recipe_id: str | None
) -> tuple[CancellationListener, threading.Event]:
    """Stop the wrapper when its recipe is cancelled (``zocalo cancel``), now or before
    (kept by the broker, read before this returns); the event says so.

    A cancelled recipe is told nothing more: its wrapper sends no outcome.
    """
    cancelled = threading.Event()

    def on_cancel(cancellation: Cancellation) -> None:
        if cancellation.recipe_id != recipe_id or cancelled.is_set():
            return
        cancelled.set()
        if listener.replayed.is_set():  # (else it has not started: nothing to stop)
            log.warning("recipe %s was cancelled: stopping", recipe_id)
            threading.Thread(target=wrapper.stop, name="zocalo-wrapper-stop", daemon=True).start()

    listener = CancellationListener(transport, on_cancel)
    if recipe_id is None:
        return listener, cancelled
    replay = listener.listen()
    if not replay.keeps and not isinstance(replay.error, UnsupportedFeature):
        log.warning(
            "cancellations made before this wrapper started are not heard: %s", replay.error
        )
    elif replay.keeps and not replay.complete:
        log.warning(
            "the cancellations kept by the broker were not all read: %s",
            replay.error or "timed out",
        )
    return listener, cancelled


def _run(wrapper: BaseWrapper, name: str, cancelled: threading.Event) -> Status:
    """``run()`` and its report (success or failure); the status it ends in."""
    try:
        succeeded = wrapper.run()
    except KeyboardInterrupt:
        log.info("wrapper %s: interrupted", name)
        wrapper.failure("Interrupted")
        return Status.END
    except Exception as error:
        if cancelled.is_set():
            log.info("wrapper %s stopped (its recipe was cancelled): %s", name, error)
            return Status.END
        log.error("wrapper %s failed: %s", name, error, exc_info=True)
        wrapper.failure(error)
        return Status.ERROR
    if cancelled.is_set():
        log.info("wrapper %s: its recipe was cancelled, so it reports nothing", name)
    elif succeeded:
        log.info("wrapper %s: processing finished", name)
        wrapper.success(_report(wrapper, FINISHED_TEXT))
    else:
        log.info("wrapper %s: processing failed", name)
        wrapper.failure(wrapper.failure_reason or FAILED_TEXT)
    return Status.END


def _report(wrapper: BaseWrapper, default: str) -> Any:
    return wrapper.result if wrapper.result is not None else default


def stop_on_signals(wrapper: BaseWrapper) -> None:
    """On SIGTERM (``scancel``, a time limit) ask the wrapper to stop, from a thread.

    (Not in the handler itself: stopping waits for the wrapper's program, and the
    main thread may be waiting for it already.) Call from the main thread.
    """

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("received %s: stopping", signal.Signals(signum).name)
        threading.Thread(target=wrapper.stop, name="zocalo-wrapper-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
