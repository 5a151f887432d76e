"""The runner: turns deliveries into handler calls, and handler results into acks.

Deliveries arrive on transport threads. On a transport that calls every
callback on one thread (``serial_callbacks``: SQLite, RabbitMQ, STOMP) the handler
runs right there; otherwise deliveries are queued for the caller of
:meth:`ServiceRunner.run`. Either way one message is handled at a time, so
user code is plain and single-threaded. After a handler returns, its outputs
and the ack of its input go to the transport as one
:meth:`~Transport.publish` call, whose confirmation the runner does not wait
for (see :mod:`zocalo.service.settlement`).

Everything else is middleware (:mod:`zocalo.service.middleware`), called at
the hook points of :class:`~zocalo.service.middleware.Middleware`. By default:
the recipe-ID log context, dropping the messages of cancelled recipes, retries
with a growing delay, and dead-lettering (invalid input at once, a failing
handler's message after ``max_attempts``).

A handler may keep its message to settle it later with others (batching:
:mod:`zocalo.service.kept`); the runner then settles the group in one
publish, or fails or returns each, and flushes what is kept when idle and at
stop.

What is not a handler's ``Exception`` (its ``sys.exit()``), or a hook that
raises, stops the service: :meth:`ServiceRunner.run` raises it, whichever
thread the message was handled on, and the message returns to its queue.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from zocalo.errors import InvalidMessage, TransportError, ZocaloError
from zocalo.recipe import wire
from zocalo.recipe.step import RecipeStep
from zocalo.service.base import HandlerSpec, Service
from zocalo.service.kept import IdleTimer, Kept
from zocalo.service.middleware import (
    DEAD_LETTERED,
    FAILED,
    HANDLED,
    InHand,
    Middleware,
    default_middleware,
)
from zocalo.service.middleware.base import KEPT, RETURNED, hooks
from zocalo.service.runner_settings import RunnerSettings, RunnerStats
from zocalo.service.settlement import Settlement
from zocalo.transport.base import Capability, Delivery, Outgoing, Subscription, Transport

__all__ = ["STARTED_MARK", "STOPPED_MARK", "RunnerSettings", "RunnerStats", "ServiceRunner"]

log = logging.getLogger("zocalo.service.runner")

#: What the runner's start and stop log lines contain (the stop line then carries the
#: counters as JSON), so that a process running a service can be followed from outside.
STARTED_MARK = "started:"
STOPPED_MARK = "stopped: "


class ServiceRunner:
    """Runs one service instance on one transport, with ``middleware`` around it
    (:func:`~zocalo.service.middleware.default_middleware` unless given)."""

    def __init__(
        self,
        service: Service,
        transport: Transport,
        settings: RunnerSettings | None = None,
        middleware: Iterable[Middleware] | None = None,
    ) -> None:
        self.service = service
        self.transport = transport
        self.settings = settings or RunnerSettings()
        self.stats = RunnerStats()
        self._work: queue.SimpleQueue[tuple[Delivery, HandlerSpec] | None] = queue.SimpleQueue()
        self._subscriptions: list[Subscription] = []
        self._stop = threading.Event()
        #: Set with _stop, _failure or _escaped: deliveries are no longer handled.
        self._halting = False
        self._settlement = Settlement(transport, self.settings, self.stats)
        #: Why the service stops with an error (then run() raises it).
        self._failure: str | None = None
        #: What escaped process() on the transport's thread (then run() raises it).
        self._escaped: list[BaseException] = []
        self._release_lock = threading.Lock()
        #: Held while a message is handled (on either path) and while kept ones are
        #: flushed: the hooks and the service's code run one at a time.
        self._in_hand = threading.Lock()
        #: Messages kept by their handlers, unsettled, oldest first (see zocalo.service.kept).
        self._kept: dict[Kept, InHand] = {}
        #: The message in hand's, once its handler kept it.
        self._keeping: Kept | None = None
        self._idle = IdleTimer(self._flush_when_idle, name="runner-idle")
        service._runner = self
        self.started = threading.Event()
        #: The message being processed, None between messages.
        self.message_in_hand: InHand | None = None
        self.middleware: list[Middleware] = []
        self._set_middleware(default_middleware() if middleware is None else list(middleware))

    # -- middleware -----------------------------------------------------------
    def add_middleware(self, middleware: Middleware) -> None:
        """Add ``middleware`` innermost (after the others); before :meth:`run`."""
        self._set_middleware([*self.middleware, middleware])

    def _set_middleware(self, middleware: list[Middleware]) -> None:
        """Keep, per hook point, the bound hooks that do something: the hot path
        iterates these lists and nothing else."""
        self.middleware = middleware
        self._on_start = hooks(middleware, "on_start")
        self._before_message = hooks(middleware, "before_message")
        self._before_handler = hooks(middleware, "before_handler")
        self._on_failure = hooks(middleware, "on_failure")
        self._on_kept = hooks(middleware, "on_kept", reverse=True)
        self._after_message = hooks(middleware, "after_message", reverse=True)
        self._on_stop = hooks(middleware, "on_stop", reverse=True)

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Connect, run ``initializing`` and the ``on_start`` hooks, subscribe every handler."""
        if not self.transport.connected:
            self.transport.connect()
        self.transport.failure_listeners.append(self.stop_with_error)
        self.service.initializing()
        handlers = self.service.handlers()
        for hook in self._on_start:
            hook(self)
        for spec in handlers:
            self._subscribe(spec)
        self.started.set()
        log.info(
            "service %s " + STARTED_MARK + " %s",
            self.service.name,
            "; ".join(spec.describe() for spec in handlers),
        )

    def _subscribe(self, spec: HandlerSpec) -> None:
        def enqueue(delivery: Delivery, spec: HandlerSpec = spec) -> None:
            self._work.put((delivery, spec))

        def handle_here(delivery: Delivery, spec: HandlerSpec = spec) -> None:
            # The transport calls every callback on one thread, one at a time: handle the
            # message right here and save a thread hand-off per message.
            with self._in_hand:
                if self._halting:
                    # Returned by _release once unsubscribed: a nack now would hand it
                    # straight back to this consumer, round after round, until the
                    # delivery limit dead-letters it.
                    self._work.put((delivery, spec))
                    return
                try:
                    self.process(delivery, spec)
                except BaseException as error:
                    self._escape(error)

        callback = handle_here if self.transport.serial_callbacks else enqueue

        exclusive = spec.exclusive
        if exclusive and Capability.EXCLUSIVE not in self.transport.capabilities:
            # Refusing would stop the service, and its supervisor would restart it, again
            # and again: it runs, sharing the queue, and says so.
            log.warning(
                "%s cannot keep queue %r to one consumer: %s consumes it beside any others",
                type(self.transport).__name__,
                spec.destination,
                self.service.name,
            )
            exclusive = False
        if spec.broadcast:
            subscription = self.transport.subscribe_broadcast(spec.destination, callback)
        else:
            subscription = self.transport.subscribe(
                spec.destination, callback, prefetch=spec.prefetch, exclusive=exclusive
            )
        self._subscriptions.append(subscription)

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish the message in hand and return. Thread/signal safe.

        Deliveries prefetched but not yet handled go back to their queues at
        once, from a thread of their own (a signal handler must not wait on
        the transport), rather than after the message in hand is done.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self._halting = True
        self._work.put(None)
        threading.Thread(target=self._release, name="runner-release", daemon=True).start()

    def stop_with_error(self, reason: str) -> None:
        """Stop handling messages; :meth:`run` then raises :class:`TransportError`
        with ``reason`` (the transport failed, or the service cannot work)."""
        self._failure = reason
        self._halting = True
        self._work.put(None)

    def _escape(self, error: BaseException) -> None:
        """Hand what escaped :meth:`process` on the transport's thread to :meth:`run`.

        A handler's ``sys.exit()``, or a hook that raises, then ends the service
        as it does when messages are handled on run()'s own thread (memory). Left
        on the transport's thread it ended only that thread, and the service sat
        alive consuming nothing; or, for an Exception, the transport logged it
        and went on, so the two paths differed. The message in hand is left
        unsettled: it returns to its queue when the transport closes.
        """
        self._escaped.append(error)
        self._halting = True
        self._work.put(None)

    @property
    def processing(self) -> bool:
        """True while a message is in hand (for status reports)."""
        return self.message_in_hand is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Start, then handle messages until :meth:`request_stop`; then stop cleanly."""
        try:
            self.start()
        except BaseException:
            self.transport.close()  # nothing subscribed yet: nothing to return or confirm
            raise
        try:
            while not self._halting:
                item = self._work.get()
                if item is None:
                    continue
                if self._halting:
                    self._work.put(item)  # returned by _release with the others
                    break
                with self._in_hand:
                    self.process(*item)
        finally:
            self.shutdown()
        if self._escaped:
            raise self._escaped[0]
        if self._failure is not None:
            raise TransportError(self._failure)

    def shutdown(self) -> None:
        """Stop consuming, return unhandled deliveries, settle or return kept ones,
        wait for confirms, close."""
        self._release()
        self._idle.close()
        try:
            with self._in_hand:  # a message being handled is finished first
                self._flush_at_stop()
            self._settlement.finish(self.settings.stop_timeout)
            self.service.stopping()
            for hook in self._on_stop:
                hook(self)
        finally:
            self.transport.close()
            log.info(
                "service %s " + STOPPED_MARK + "%s",
                self.service.name,
                json.dumps(self.stats.snapshot()),
            )

    def _release(self) -> None:
        """Unsubscribe everything and return unhandled deliveries (idempotent)."""
        with self._release_lock:
            subscriptions, self._subscriptions = self._subscriptions, []
            for subscription in subscriptions:
                try:
                    self.transport.unsubscribe(subscription)
                except ZocaloError as error:
                    log.warning("could not unsubscribe %s: %s", subscription.describe(), error)
            self._return_unhandled()
            self._work.put(None)  # draining took the stop sentinel: wake run() again

    def _return_unhandled(self) -> None:
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[0].ackable:
                self.give_back(item[0], "service stopping")

    # -- one message --------------------------------------------------------
    def process(self, delivery: Delivery, spec: HandlerSpec) -> None:
        """Decode, call the handler, then settle (publish outputs + ack); the hooks around.

        The caller holds ``_in_hand``."""
        self.stats.add("received")
        message = self.message_in_hand = InHand(delivery, spec, time.monotonic())
        began = time.perf_counter()
        try:
            invalid: InvalidMessage | None = None
            try:
                step, payload = self._decode(delivery, spec)
                message.step = step
            except InvalidMessage as error:
                invalid = error
            for hook in self._before_message:
                hook(self, message)
            outcome = FAILED  # unless settled: something escaped, and the service stops
            try:
                if invalid is not None:
                    outcome = self._failed(message, invalid)
                else:
                    outcome = self._settled_before_handler(message) or self._call(
                        message, step, payload
                    )
            finally:
                outcome = self._let_go(outcome)
                elapsed = time.perf_counter() - began
                if outcome == KEPT:
                    for kept_hook in self._on_kept:
                        kept_hook(self, message)
                else:
                    for hook in self._after_message:
                        hook(self, message, outcome, elapsed)
        finally:
            self.message_in_hand = None
            self.stats.add("busy_seconds", time.perf_counter() - began)
            if self._kept:
                self._idle.arm(self.service.flush_idle)

    def _settled_before_handler(self, message: InHand) -> str | None:
        """The outcome of a ``before_handler`` hook that settled the message, if one did."""
        for hook in self._before_handler:
            outcome = hook(self, message)
            if outcome is not None:
                return outcome
        return None

    def _call(self, message: InHand, step: RecipeStep, payload: Any) -> str:
        try:
            message.spec.function(step, payload)
        except InvalidMessage as error:
            if self._settled_already(message, error):
                return HANDLED  # (its real outcome: see _let_go)
            # The handler says the input itself is unusable: one line, no retries.
            self.stats.add("failed")
            log.error(
                "handler %s refused %s: %s",
                message.spec.function.__qualname__,
                message.delivery.describe(),
                error,
            )
            return self._failed(message, error)
        except Exception as error:
            if self._settled_already(message, error):
                return HANDLED
            self.stats.add("failed")
            log.error(
                "handler %s raised on %s (attempt %d of %d)",
                message.spec.function.__qualname__,
                message.delivery.describe(),
                message.attempt,
                self.settings.max_attempts_of(message.spec),
                exc_info=error,
            )
            return self._failed(message, error)
        if self._keeping is not None:
            return KEPT  # counted and settled with its group
        if step.unrouted:
            self.stats.add("unrouted", len(step.unrouted))
        self.stats.add("handled")
        self.settle(message.delivery, step.outputs)
        return HANDLED

    def _decode(self, delivery: Delivery, spec: HandlerSpec) -> tuple[RecipeStep, Any]:
        if wire.is_recipe_message(delivery.headers):
            message = wire.decode(
                delivery.body,
                delivery.headers,
                delivery.describe(),
                max_hops=self.settings.max_hops,
            )
            step = RecipeStep(
                message,
                headers=delivery.headers,
                message_id=delivery.message_id,
                transport=self.transport,
            )
            return step, message.payload
        if not spec.allow_plain:
            raise InvalidMessage(
                f"{delivery.describe()}: not a recipe message (no {wire.RECIPE_HEADER!r} "
                f"header) and {spec.function.__qualname__} accepts recipe messages only"
            )
        payload = wire.decode_json(delivery.body, delivery.describe())
        plain = RecipeStep(
            None, headers=delivery.headers, message_id=delivery.message_id, transport=self.transport
        )
        return plain, payload

    def _failed(self, message: InHand, error: Exception) -> str:
        """Let the ``on_failure`` hooks settle a failed or invalid message; the outcome."""
        for hook in self._on_failure:
            outcome = hook(self, message, error)
            if outcome is not None:
                return outcome
        # Nothing settled it: reject it, for the transport to dead-letter.
        delivery, reason = message.delivery, message.reason(error)
        if not delivery.ackable:  # a broadcast: nothing to settle
            if message.step is None:  # (a handler's failure is logged and counted already)
                log.error("dropping %s: %s", delivery.describe(), reason)
                self.stats.add("failed")
            return FAILED
        log.error("no middleware settled %s; rejecting it: %s", delivery.describe(), reason)
        try:
            self.transport.nack(delivery, requeue=False, reason=reason)
        except ZocaloError as nack_error:
            log.warning("cannot reject %s: %s", delivery.describe(), nack_error)
            return FAILED
        self.stats.add("dead_lettered")
        return DEAD_LETTERED

    # -- settling (see zocalo.service.settlement) ----------------------------
    def settle(self, delivery: Delivery, outputs: Sequence[Outgoing]) -> None:
        """Publish ``outputs`` and ack ``delivery`` as one publish, without waiting for
        the confirm; if the broker refuses, ``delivery`` returns to its queue later."""
        self._settlement.settle(delivery, outputs)

    def give_back(self, delivery: Delivery, reason: str) -> None:
        """Return ``delivery`` to its queue now; a transport that cannot is logged."""
        self._settlement.give_back(delivery, reason)

    # -- kept messages (see zocalo.service.kept) -----------------------------
    def keep_message(self) -> Kept:
        """Keep the message in hand (from its handler, or a ``before_handler`` hook that
        then returns :data:`KEPT`): it is not settled when its handler returns, but
        later, by :meth:`settle_kept`, :meth:`fail_kept` or :meth:`give_back_kept`."""
        message = self.message_in_hand
        if message is None or message.step is None:
            raise ZocaloError("only the handler of a decoded message can keep it")
        if self._keeping is None:
            self._keeping = Kept(message.delivery, message.step)
            self._kept[self._keeping] = message
        return self._keeping

    def settle_kept(self, kept: Iterable[Kept]) -> None:
        """Publish the outputs of every message in ``kept`` and ack them all, as one
        publish without waiting (see :meth:`settle`); they count as handled."""
        group = self._unsettled(kept)
        if not group:
            return
        steps = [each.step for each, _ in group]
        unrouted = sum(len(step.unrouted) for step in steps)
        if unrouted:
            self.stats.add("unrouted", unrouted)
        self.stats.add("handled", len(group))
        outputs = [output for step in steps for output in step.outputs]
        self._settlement.settle([each.delivery for each, _ in group], outputs)
        for each, message in group:
            self._finished(each, message, HANDLED)

    def fail_kept(self, kept: Iterable[Kept], error: Exception) -> None:
        """Each message in ``kept`` fails with ``error`` as if its handler had raised it
        (tried again later with the reason; dead-lettered after its last attempt, or at
        once for an :class:`InvalidMessage`), under one log line for the group."""
        group = self._unsettled(kept)
        if not group:
            return
        self.stats.add("failed", len(group))
        first, message = group[0]
        log.error(
            "%d messages kept by %s failed (the first: %s): %s: %s",
            len(group),
            message.spec.function.__qualname__,
            first.describe(),
            type(error).__name__,
            error,
        )
        for each, message in group:
            self._finished(each, message, self._failed(message, error))

    def give_back_kept(self, kept: Iterable[Kept], reason: str) -> None:
        """Return every message in ``kept`` to its queue now, unhandled (``reason`` goes
        to the transport); the hooks see them end as :data:`RETURNED`."""
        for each, message in self._unsettled(kept):
            if each.delivery.ackable:
                self.give_back(each.delivery, reason)
            self._finished(each, message, RETURNED)

    def _unsettled(self, kept: Iterable[Kept]) -> list[tuple[Kept, InHand]]:
        """Those of ``kept`` not settled before (with their messages), now marked settled
        and no longer kept."""
        group = []
        for each in kept:
            message = self._kept.pop(each, None)
            if message is not None and not each.settled:
                each.settled = True
                group.append((each, message))
        if not self._kept:
            self._idle.disarm()
        return group

    def _finished(self, kept: Kept, message: InHand, outcome: str) -> None:
        """Tell the hooks how a kept message ended: now, or (settled from its own
        handler, e.g. the message that filled a batch) when its processing ends."""
        if kept.in_process:
            kept.outcome = outcome
            return
        seconds = time.monotonic() - message.since
        for hook in self._after_message:
            hook(self, message, outcome, seconds)

    def _settled_already(self, message: InHand, error: Exception) -> bool:
        """True when the handler raised ``error`` after settling its own kept message
        (with the group it filled): that settlement stands, and the error is logged."""
        kept = self._keeping
        if kept is None or not kept.settled:
            return False  # it fails as any other (a kept one is let go: see _let_go)
        log.error(
            "handler %s raised on %s after settling it",
            message.spec.function.__qualname__,
            message.delivery.describe(),
            exc_info=error,
        )
        return True

    def _let_go(self, outcome: str) -> str:
        """The processing of the message in hand ends with ``outcome``: how it really
        ended, if its handler kept it and settled it already; :data:`KEPT` if still kept."""
        kept, self._keeping = self._keeping, None
        if kept is None:
            return outcome
        kept.in_process = False
        if kept.outcome is not None:
            return kept.outcome
        if outcome != KEPT:  # its handler raised after keeping it: it failed, it is not kept
            self._unsettled([kept])
        return outcome

    def _flush_when_idle(self) -> None:
        """On the idle timer's thread, ``flush_idle`` seconds after the last message,
        while some are kept: the service flushes them (one at a time with handlers)."""
        with self._in_hand:
            if self._halting or not self._kept:
                return
            try:
                self.service.flush_kept()
            except BaseException as error:
                self._escape(error)
                return
            if self._kept:
                self._idle.arm(self.service.flush_idle)

    def _flush_at_stop(self) -> None:
        """The last flush: what the service still keeps afterwards returns to its queue,
        so nothing kept is lost, and nothing is acked that the service did not settle."""
        if not self._kept:
            return
        try:
            self.service.flush_kept()
        except Exception as error:
            log.error(
                "service %s could not flush what it keeps at stop (%s: %s)",
                self.service.name,
                type(error).__name__,
                error,
            )
        if self._kept:
            left = list(self._kept)
            log.warning("%d kept messages return to their queues unsettled", len(left))
            self.give_back_kept(left, "service stopping")
