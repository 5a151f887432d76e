"""The hook points around the runner, and what a hook sees of the message and the runner.

Behaviour that is not the runner's core (decode, call the handler, settle) is
middleware: one class per concern, each overriding only the hooks it needs.
The runner calls each hook point's overrides only, from lists it builds once,
so a hook nobody overrides costs nothing per message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from zocalo.errors import one_line
from zocalo.service.kept import Settler

if TYPE_CHECKING:
    from zocalo.recipe.step import RecipeStep
    from zocalo.service.base import HandlerSpec, Service
    from zocalo.service.runner_settings import RunnerSettings, RunnerStats
    from zocalo.transport.base import Delivery, Outgoing, Transport

#: The longest failure reason a message carries (and a log line gives): the dead-letter
#: history keeps ten in one header, which ActiveMQ's STOMP codec takes up to 10 KiB.
REASON_LIMIT = 500

#: How a message ended, as ``after_message`` hooks (and the metrics) are told.
HANDLED = "handled"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
FAILED = "failed"
#: Settled before its handler ran: acked and dropped (its recipe was cancelled).
CANCELLED = "cancelled"
#: Kept by its handler and returned to its queue unhandled (the service stopped).
RETURNED = "returned"
OUTCOMES = (HANDLED, RETRIED, DEAD_LETTERED, FAILED, CANCELLED, RETURNED)
#: Not an end: its handler kept it, to settle later (see :mod:`zocalo.service.kept`).
#: A ``before_handler`` hook that keeps a message returns this.
KEPT = "kept"

#: Failed attempts so far, in a message the retries middleware re-published.
ATTEMPT_HEADER = "zocalo-attempt"


class InHand:
    """The message being processed: a delivery, its handler, and (once decoded) its step.

    ``step`` is None while the body is not decoded, and stays None for a
    message that cannot be decoded or routed (invalid input: never retried).
    """

    __slots__ = ("delivery", "since", "spec", "step")

    def __init__(self, delivery: Delivery, spec: HandlerSpec, since: float) -> None:
        self.delivery = delivery
        self.spec = spec
        #: ``time.monotonic()`` when the runner took it in hand.
        self.since = since
        self.step: RecipeStep | None = None

    @property
    def attempt(self) -> int:
        """Which attempt at this message this is (1 for a first delivery)."""
        try:
            return int(self.delivery.headers.get(ATTEMPT_HEADER) or 0) + 1
        except (TypeError, ValueError, OverflowError):  # foreign or hostile headers: none
            return 1

    def reason(self, error: BaseException) -> str:
        """One line on why it failed, for logs and headers (an invalid message's error
        already names the message and the cause), at most :data:`REASON_LIMIT` long."""
        text = str(error) if self.step is None else f"{type(error).__name__}: {error}"
        return one_line(text, REASON_LIMIT)


class Runner(Settler, Protocol):
    """What a hook may use of the runner (``ServiceRunner`` is one): also keeping
    messages and settling them later (see :mod:`zocalo.service.kept`)."""

    service: Service
    transport: Transport
    settings: RunnerSettings
    stats: RunnerStats

    def settle(self, delivery: Delivery, outputs: Sequence[Outgoing]) -> None:
        """Publish ``outputs`` and ack ``delivery`` in one atomic publish, without
        waiting for the confirm; if the broker refuses, ``delivery`` returns later."""

    def give_back(self, delivery: Delivery, reason: str) -> None:
        """Return ``delivery`` to its queue now (a failure to do so is logged)."""

    def request_stop(self) -> None:
        """Finish the message in hand and stop (thread safe)."""

    def stop_with_error(self, reason: str) -> None:
        """Stop; ``run()`` then raises with ``reason`` (the supervisor restarts the service)."""


class Middleware:
    """Base class of runner middleware: override the hooks you need, leave the rest.

    Hook points, in the order the runner reaches them:

    ``on_start(runner)``
        once, after ``Service.initializing`` and before the first subscription
        (``runner.service.handlers()`` is then complete).
    ``before_message(runner, message)``
        for every message, once it is decoded (``message.step`` is None when it
        cannot be: it is then invalid input), just before its handler runs.
    ``before_handler(runner, message) -> outcome | None``
        for every valid message, after the ``before_message`` hooks: a hook may
        settle it instead of its handler (e.g. ack and drop it) and return the
        outcome; the handler then does not run and the rest are skipped. ``None``
        passes it on, in list order, to the handler at last. A hook that keeps it
        (``runner.keep_message()``) returns :data:`KEPT`.
    ``on_failure(runner, message, error) -> outcome | None``
        the handler raised ``error``, or the message is invalid (``error`` is
        the :class:`~zocalo.errors.InvalidMessage`). Hooks are asked in list
        order; the first to settle the message (e.g. re-publish it, dead-letter
        it) returns the outcome and the rest are skipped; ``None`` passes it on.
        Settled by no hook, the message is rejected (nacked without requeue:
        the transport dead-letters it; a broadcast is dropped), with a log line.
    ``on_kept(runner, message)``
        its handler kept it (see :mod:`zocalo.service.kept`): the runner lets
        go of it unsettled; it is still in flight, and ``after_message`` comes
        once it is settled, later (perhaps on the idle timer's thread).
    ``after_message(runner, message, outcome, seconds)``
        for every message whose ``before_message`` hooks ran, once it is
        settled (its outputs and ack handed to the transport, not necessarily
        confirmed yet); ``outcome`` is one of :data:`OUTCOMES`, ``seconds`` the
        time since the runner took it in hand. A kept message settled while
        another is in hand (a batch filled by the newest) gets it then.
    ``on_stop(runner)``
        once, after the last message and its confirms, before the transport
        closes.

    ``on_kept``, ``after_message`` and ``on_stop`` hooks run in the reverse order of the
    list, so that the first middleware wraps all the others (as nested ``with``
    blocks would). Hooks of one runner are called one at a time, on whichever
    thread handles messages (or flushes kept ones, under the same lock); a hook
    that raises stops the service with its error, as a bug in the runner would,
    so a hook that can fail for reasons of its own (a database) catches them.
    """

    def on_start(self, runner: Runner) -> None:
        """Called once, before the first subscription."""

    def before_message(self, runner: Runner, message: InHand) -> None:
        """Called for every message, decoded, before its handler."""

    def before_handler(self, runner: Runner, message: InHand) -> str | None:
        """Settle a valid message instead of its handler and return the outcome, or
        return None to let it run."""
        return None

    def on_failure(self, runner: Runner, message: InHand, error: Exception) -> str | None:
        """Settle a failed or invalid message and return the outcome, or return None."""
        return None

    def on_kept(self, runner: Runner, message: InHand) -> None:
        """Called when a handler kept its message: settled later, then ``after_message``."""

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        """Called for every message once it is settled."""

    def on_stop(self, runner: Runner) -> None:
        """Called once, after the last message, before the transport closes."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """True when ``middleware`` does something at ``hook`` (its class overrides it)."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


def hooks(
    middleware: Sequence[Middleware], hook: str, *, reverse: bool = False
) -> list[Callable[..., Any]]:
    """The bound ``hook`` methods of the middleware that override it, in call order."""
    ordered = reversed(middleware) if reverse else middleware
    return [getattr(each, hook) for each in ordered if overrides(each, hook)]
