"""The runner: turns deliveries into handler calls, and handler results into acks.

Deliveries arrive on transport threads and are queued; one thread (the
caller of :meth:`ServiceRunner.run`) calls the handlers, so user code is
plain and single-threaded. After a handler returns, its outputs and the ack
of its input go to the transport as one :meth:`~Transport.publish` call; the
runner does not wait for the broker's confirmation but goes on to the next
message, so confirms are pipelined up to the subscription's prefetch.

Failures never stop the service:
- an undecodable or non-recipe body goes straight to ``dlq.<queue>`` with
  the reason (retrying cannot help); that queue is declared first, as a
  queue an operator declared may have none;
- a handler that raises is retried: the message is re-published with an
  attempt count and the reason in its headers, after a growing delay, and
  the original acked in the same atomic publish; after ``max_attempts`` it
  goes to ``dlq.<queue>`` with the reason and the recipe path (both
  republishes leave out the broker's own headers: see
  :func:`~zocalo.transport.base.without_broker_headers`);
- outputs the broker refuses leave the input unacked: it is returned to its
  queue, and the broker's own delivery limit stays the safety net.

What is not a handler's ``Exception`` (its ``sys.exit()``), or a hook that
raises, does stop the service: :meth:`ServiceRunner.run` raises it, whichever
thread the message was handled on, and the message returns to its queue.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from zocalo.errors import ConnectionFailed, InvalidMessage, TransportError, ZocaloError
from zocalo.logs import recipe_context
from zocalo.recipe import wire
from zocalo.recipe.step import RecipeStep
from zocalo.service.base import HandlerSpec, Service
from zocalo.service.held import HeldReturns
from zocalo.transport.base import Capability, Delivery, Outgoing, Subscription, Transport
from zocalo.transport.dead_letters import (
    DLQ_HISTORY_HEADER,
    dead_letter_headers,
    dlq_name,
    with_history,
    without_broker_headers,
)

log = logging.getLogger("zocalo.service.runner")

#: What the runner's start and stop log lines contain (the stop line then carries the
#: counters as JSON), so that a process running a service can be followed from outside.
STARTED_MARK = "started:"
STOPPED_MARK = "stopped: "
ATTEMPT_HEADER = "zocalo-attempt"
RETRY_REASON_HEADER = "zocalo-retry-reason"
RECIPE_PATH_HEADER = "zocalo-recipe-path"
#: The longest pause before an input whose outputs were refused returns to its queue.
MAX_HOLD_SECONDS = 30.0


@dataclass
class RunnerSettings:
    """Retry policy and shutdown limits.

    ``max_attempts`` must stay below the broker's delivery limit (5 on DLS
    RabbitMQ), which is kept for messages that crash the whole process.
    """

    max_attempts: int = 3
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    stop_timeout: float = 30.0
    #: Longest recipe-path a message may carry; beyond it, a runaway loop (dead-lettered).
    max_hops: int = 1000

    def delay_before(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): grows geometrically."""
        return self.retry_delay * self.retry_backoff ** (attempt - 1)


@dataclass
class RunnerStats:
    """Counts of everything the runner did; every discard is counted."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    unrouted: int = 0
    publish_failed: int = 0
    #: Seconds spent inside process() (handler, decoding, settling).
    busy_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class ServiceRunner:
    """Runs one service instance on one transport."""

    def __init__(
        self,
        service: Service,
        transport: Transport,
        settings: RunnerSettings | None = None,
    ) -> None:
        self.service = service
        self.transport = transport
        self.settings = settings or RunnerSettings()
        self.stats = RunnerStats()
        self._work: queue.SimpleQueue[tuple[Delivery, HandlerSpec] | None] = queue.SimpleQueue()
        self._subscriptions: list[Subscription] = []
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        self._all_settled = threading.Condition(self._pending_lock)
        self._stop = threading.Event()
        self._held = HeldReturns()
        #: Why the transport can no longer serve this service (then run() raises it).
        self._failure: str | None = None
        #: What escaped process() on the transport's thread (then run() raises it).
        self._escaped: list[BaseException] = []
        self._release_lock = threading.Lock()
        #: Held while a handler runs on the transport's callback thread.
        self._in_hand = threading.Lock()
        self.started = threading.Event()
        #: (delivery, handler, time.monotonic() at its start) while a message is in hand.
        self.message_in_hand: tuple[Delivery, HandlerSpec, float] | None = None
        #: Called as listener(queue, outcome, seconds) after every message; outcome is
        #: handled, retried, dead_lettered or failed. Metrics hang here.
        self.listeners: list[Callable[[str, str, float], None]] = []
        #: Called as hook(queue) before every message (for in-flight gauges).
        self.on_start: list[Callable[[str], None]] = []

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Connect, run ``initializing`` and subscribe every handler."""
        if not self.transport.connected:
            self.transport.connect()
        self.transport.failure_listeners.append(self._transport_failed)
        self.service.initializing()
        handlers = self.service.handlers()
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
                if self._stop.is_set() or self._failure is not None or self._escaped:
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

        if spec.broadcast:
            subscription = self.transport.subscribe_broadcast(spec.destination, callback)
        else:
            subscription = self.transport.subscribe(
                spec.destination, callback, prefetch=spec.prefetch
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
        self._work.put(None)
        threading.Thread(target=self._release, name="runner-release", daemon=True).start()

    @property
    def processing(self) -> bool:
        """True while a message is in hand (for status reports)."""
        return self.message_in_hand is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Start, then handle messages until :meth:`request_stop`; then stop cleanly."""
        self.start()
        try:
            while not self._stop.is_set() and self._failure is None and not self._escaped:
                item = self._work.get()
                if item is None:
                    continue
                if self._stop.is_set():
                    self._work.put(item)  # returned by _release with the others
                    break
                self.process(*item)
        finally:
            self.shutdown()
        if self._escaped:
            raise self._escaped[0]
        if self._failure is not None:
            raise TransportError(self._failure)

    def _transport_failed(self, reason: str) -> None:
        """The transport cannot serve a subscription any more: stop with an error."""
        self._failure = reason
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
        self._work.put(None)

    def shutdown(self) -> None:
        """Stop consuming, return unhandled deliveries, wait for confirms, close."""
        self._release()
        with self._in_hand:
            pass  # a message being handled on the transport's thread is finished first
        self._wait_for_confirms(self.settings.stop_timeout)
        self._held.flush()
        try:
            self.service.stopping()
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
                self._quietly(self.transport.nack, item[0], requeue=True, reason="service stopping")

    def _wait_for_confirms(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._all_settled:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.error(
                        "%d publishes still unconfirmed at shutdown; their inputs "
                        "stay unacked and return to the queue",
                        len(self._pending),
                    )
                    return False
                self._all_settled.wait(remaining)
        return True

    # -- one message --------------------------------------------------------
    def process(self, delivery: Delivery, spec: HandlerSpec) -> None:
        """Decode, call the handler, then settle (publish outputs + ack)."""
        self.stats.add("received")
        self.message_in_hand = (delivery, spec, time.monotonic())
        for hook in self.on_start:
            hook(spec.destination)
        began = time.perf_counter()
        outcome = "dead_lettered"
        try:
            outcome = self._process(delivery, spec)
        finally:
            elapsed = time.perf_counter() - began
            self.message_in_hand = None
            self.stats.add("busy_seconds", elapsed)
            for listener in self.listeners:
                listener(spec.destination, outcome, elapsed)

    def _process(self, delivery: Delivery, spec: HandlerSpec) -> str:
        what = delivery.describe()
        try:
            step, payload = self._decode(delivery, spec, what)
        except InvalidMessage as error:
            return self._dead_letter(delivery, str(error), path=None)
        with recipe_context(step.recipe_id, step.pointer):
            try:
                spec.function(step, payload)
            except Exception as error:
                return self._handler_failed(delivery, spec, step, error)
            if step.unrouted:
                self.stats.add("unrouted", len(step.unrouted))
            self.stats.add("handled")
            self._settle(delivery, step.outputs, what)
            return "handled"

    def _decode(self, delivery: Delivery, spec: HandlerSpec, what: str) -> tuple[RecipeStep, Any]:
        if wire.is_recipe_message(delivery.headers):
            message = wire.decode(
                delivery.body, delivery.headers, what, max_hops=self.settings.max_hops
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
                f"{what}: not a recipe message (no {wire.RECIPE_HEADER!r} header) and "
                f"{spec.function.__qualname__} accepts recipe messages only"
            )
        payload = wire.decode_json(delivery.body, what)
        plain = RecipeStep(
            None, headers=delivery.headers, message_id=delivery.message_id, transport=self.transport
        )
        return plain, payload

    def _settle(self, delivery: Delivery, outputs: Sequence[Outgoing], what: str) -> None:
        ack = delivery if delivery.ackable else None
        if ack is None and not outputs:
            return
        try:
            confirmation = self.transport.publish(outputs, ack=ack)
        except ZocaloError as error:
            self._publish_failed(delivery, what, error)
            return
        with self._pending_lock:
            self._pending.add(confirmation)
        confirmation.add_done_callback(lambda done: self._confirmed(done, delivery, what))

    def _confirmed(self, done: Future, delivery: Delivery, what: str) -> None:
        with self._all_settled:
            self._pending.discard(done)
            self._all_settled.notify_all()
        error = done.exception()
        if error is not None:
            self._publish_failed(delivery, what, error)
        else:
            self._held.in_a_row = 0

    def _publish_failed(self, delivery: Delivery, what: str, error: BaseException) -> None:
        """Return the input unacknowledged, after a pause that grows while refusals go on."""
        self.stats.add("publish_failed")
        self._held.in_a_row += 1
        pause = min(self.settings.delay_before(self._held.in_a_row), MAX_HOLD_SECONDS)
        log.error(
            "outputs of %s were not accepted, so it is not acknowledged and returns "
            "to its queue in %.1f s: %s",
            what,
            pause,
            error,
        )
        if delivery.ackable:
            self._held.hold(
                pause,
                lambda: self._quietly(
                    self.transport.nack,
                    delivery,
                    requeue=True,
                    reason=f"outputs not accepted: {error}",
                ),
            )

    # -- failures -----------------------------------------------------------
    def _handler_failed(
        self, delivery: Delivery, spec: HandlerSpec, step: RecipeStep, error: Exception
    ) -> str:
        """Retry later, or dead-letter after the last attempt; returns which."""
        self.stats.add("failed")
        reason = f"{type(error).__name__}: {error}"
        attempt = _int_header(delivery.headers, ATTEMPT_HEADER) + 1
        max_attempts = spec.max_attempts or self.settings.max_attempts
        log.error(
            "handler %s raised on %s (attempt %d of %d)",
            spec.function.__qualname__,
            delivery.describe(),
            attempt,
            max_attempts,
            exc_info=error,
        )
        if not delivery.ackable:
            return "failed"  # a broadcast: nothing to retry or dead-letter
        path = [*step.path, step.pointer] if step.pointer is not None else None
        if attempt >= max_attempts:
            return self._dead_letter(delivery, f"{reason} (after {attempt} attempts)", path)
        headers = without_broker_headers(delivery.headers)
        headers[ATTEMPT_HEADER] = attempt
        headers[RETRY_REASON_HEADER] = reason
        headers[DLQ_HISTORY_HEADER] = with_history(delivery.headers, reason)
        delay = self.settings.delay_before(attempt)
        if Capability.DELAY not in self.transport.capabilities:
            delay = None
        retry = Outgoing(delivery.source, delivery.body, headers, delay=delay)
        self.stats.add("retried")
        self._settle(delivery, [retry], delivery.describe())
        return "retried"

    def _dead_letter(self, delivery: Delivery, reason: str, path: list[int] | None) -> str:
        """Move a message to ``dlq.<queue>`` with why and where, acking the original.

        Returns the outcome: ``dead_lettered``, or ``failed`` when the
        dead-letter queue cannot be declared (the service then stops).
        """
        log.error("dead-lettering %s: %s", delivery.describe(), reason)
        if not delivery.ackable:
            self.stats.add("dead_lettered")
            return "dead_lettered"
        if not self._dead_letter_queue_exists(delivery):
            return "failed"
        headers = dead_letter_headers(
            delivery.headers,
            reason=reason,
            queue=delivery.source,
            history=with_history(delivery.headers, reason),
        )
        if path is not None:
            headers[RECIPE_PATH_HEADER] = path
        self.stats.add("dead_lettered")
        dead = Outgoing(dlq_name(delivery.source), delivery.body, headers)
        self._settle(delivery, [dead], delivery.describe())
        return "dead_lettered"

    def _dead_letter_queue_exists(self, delivery: Delivery) -> bool:
        """Declare ``dlq.<queue>`` (a queue an operator declared may have none), or stop.

        A dead letter the broker cannot route would return its message to the
        queue at once, to fail and be dead-lettered again: a hot loop. A broker
        refusing the declaration is a setup error: the service stops with a
        clear line and the message goes back to its queue.
        """
        target = dlq_name(delivery.source)
        try:
            self.transport.declare_queue(target)
        except ConnectionFailed:
            pass  # the publish fails as well, and the message comes back after a reconnect
        except ZocaloError as error:
            log.error(
                "cannot dead-letter %s: its dead-letter queue %r cannot be declared (%s); "
                "stopping the service, the message goes back to its queue",
                delivery.describe(),
                target,
                error,
            )
            self._quietly(self.transport.nack, delivery, requeue=True, reason=str(error))
            # An error, not a stop: the worker exits non-zero and its supervisor restarts it.
            self._transport_failed(f"dead-letter queue {target!r} cannot be declared: {error}")
            return False
        return True

    @staticmethod
    def _quietly(action: Any, *args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
        except ZocaloError as error:
            log.warning("%s failed: %s", getattr(action, "__name__", action), error)


def _int_header(headers: dict[str, Any], name: str) -> int:
    try:
        return int(headers.get(name) or 0)
    except (TypeError, ValueError, OverflowError):  # foreign or hostile headers: none
        return 0
