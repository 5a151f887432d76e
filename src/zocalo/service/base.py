"""The service base class and handler registration.

A service is a class with plain synchronous handler methods::

    class FindSpots(Service):
        @handler("per_image", prefetch=10)
        def find(self, step, payload):
            step.send({"spots": count(payload)})

The runner (``zocalo.service.runner``) owns decoding, acks, retries and the
dead-letter queue; a handler owns only its science. A handler that works in
batches keeps its messages (:meth:`Service.keep_message`) and settles them together
later (see :mod:`zocalo.service.kept`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from zocalo.errors import ZocaloError

if TYPE_CHECKING:
    from zocalo.config import SiteConfiguration
    from zocalo.service.kept import Kept, Settler

HandlerFunction = Callable[..., Any]


@dataclass(frozen=True)
class HandlerSpec:
    """What a handler consumes and how."""

    destination: str
    function: HandlerFunction
    broadcast: bool = False
    prefetch: int = 1
    #: Deliver messages without the recipe header (step.recipe is then None).
    allow_plain: bool = False
    #: Failed attempts before the message goes to the DLQ (None: the runner's default).
    max_attempts: int | None = None
    #: Seconds one message may take; past it the worker process is replaced and the
    #: message, never acknowledged, is delivered again (None: no limit).
    time_limit: float | None = None
    #: Messages of a cancelled recipe reach this handler too, with ``step.cancelled``
    #: set (by default they are acked and dropped before it runs).
    sees_cancelled: bool = False
    #: One active consumer of the queue at a time: a second instance stands by
    #: (see :meth:`zocalo.transport.base.Transport.subscribe`).
    exclusive: bool = False

    def describe(self) -> str:
        kind = "topic" if self.broadcast else "queue"
        how = " (exclusive)" if self.exclusive else ""
        return f"{kind} {self.destination!r}{how} -> {self.function.__qualname__}"


_SPEC_ATTRIBUTE = "_zocalo_handlers"


def handler(
    queue: str | None = None,
    *,
    topic: str | None = None,
    prefetch: int = 1,
    allow_plain: bool = False,
    max_attempts: int | None = None,
    time_limit: float | None = None,
    sees_cancelled: bool = False,
    exclusive: bool = False,
) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register a method as the handler of ``queue`` (or broadcast ``topic``).

    The method is called as ``method(step, payload)``. With ``time_limit``
    (seconds), a message that takes longer costs the worker process its life:
    a running handler cannot be interrupted safely, so the supervisor replaces
    the process, and the message, never acknowledged, is delivered again (to
    ``dlq.<queue>`` once the broker's delivery limit is reached).

    Messages of a recipe cancelled with ``zocalo cancel`` never reach the
    handler, unless ``sees_cancelled``: a handler that must clean up after a
    cancelled recipe (its jobs elsewhere) gets them, with ``step.cancelled`` set.

    With ``exclusive``, one instance of the service consumes the queue at a time;
    others stand by and the next takes over when it goes (a crash included). On a
    transport that cannot (RabbitMQ's STOMP plugin) the queue is shared, with a warning.
    """
    if (queue is None) == (topic is None):
        raise ValueError("give exactly one of queue= or topic=")
    if exclusive and topic is not None:
        raise ValueError("exclusive= is for a queue: every subscriber of a topic gets a copy")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, not {time_limit!r}")
    destination = queue if queue is not None else topic
    assert destination is not None

    def register(function: HandlerFunction) -> HandlerFunction:
        spec = HandlerSpec(
            destination,
            function,
            topic is not None,
            prefetch,
            allow_plain,
            max_attempts,
            time_limit,
            sees_cancelled,
            exclusive,
        )
        specs = [*getattr(function, _SPEC_ATTRIBUTE, []), spec]
        setattr(function, _SPEC_ATTRIBUTE, specs)
        return function

    return register


class Service:
    """Base class of every Zocalo service."""

    #: Human-readable name; defaults to the class name.
    name: ClassVar[str] = ""
    #: Seconds without a new message after which :meth:`flush_kept` is called, while the
    #: service keeps messages (python-zocalo's ``_register_idle``).
    flush_idle: ClassVar[float] = 1.0
    #: The runner running this service (set by it): what ``keep`` and the rest use.
    _runner: Settler | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def __init__(self, environment: dict[str, Any] | None = None) -> None:
        self.environment: dict[str, Any] = dict(environment or {})
        #: Lines logged here carry the recipe ID and step of the message in hand.
        self.log = logging.getLogger(f"zocalo.service.{self.name}")
        self._extra_handlers: list[HandlerSpec] = []

    # -- site configuration --------------------------------------------------
    @property
    def site_config(self) -> SiteConfiguration:
        """The site configuration this service runs with (e.g. its ``storage`` paths).

        Under ``zocalo.service`` it is the one named there (``--config``, ``-e``);
        elsewhere it is loaded on first use from ``$ZOCALO_CONFIG`` and
        ``$ZOCALO_DEFAULT_ENV``. Assign to it to give a service another one.
        """
        config = self.__dict__.get("_site_config")
        if config is None:
            from zocalo.config import load_configuration  # not in every supervisor

            config = self.__dict__["_site_config"] = load_configuration()
        return config

    @site_config.setter
    def site_config(self, config: SiteConfiguration) -> None:
        self.__dict__["_site_config"] = config

    # -- lifecycle hooks -----------------------------------------------------
    def initializing(self) -> None:
        """Called once after the transport connects, before any message arrives."""

    def stopping(self) -> None:
        """Called once after the last message, before the transport closes."""

    # -- kept messages (see zocalo.service.kept) -----------------------------
    def keep_message(self) -> Kept:
        """From a handler: keep its message, unsettled when the handler returns, to settle
        later with :meth:`settle_kept`, :meth:`fail_kept` or :meth:`give_back_kept`. It
        stays unacknowledged meanwhile, counting against the handler's ``prefetch``."""
        return self._settler().keep_message()

    def settle_kept(self, kept: Iterable[Kept]) -> None:
        """Publish the outputs of ``kept`` (what their handlers sent) and ack them all,
        in one publish: they are handled."""
        self._settler().settle_kept(kept)

    def fail_kept(self, kept: Iterable[Kept], error: Exception) -> None:
        """Each of ``kept`` fails with ``error`` as if its handler had raised it: tried
        again later, with the reason (dead-lettered after its last attempt)."""
        self._settler().fail_kept(kept, error)

    def give_back_kept(self, kept: Iterable[Kept], reason: str) -> None:
        """Return each of ``kept`` to its queue now, unhandled."""
        self._settler().give_back_kept(kept, reason)

    def flush_kept(self) -> None:
        """Settle (or fail) what this service keeps. The runner calls it ``flush_idle``
        seconds after the last message while some are kept, and once at stop (whatever
        is kept after that returns to its queue); never beside a handler."""

    def _settler(self) -> Settler:
        if self._runner is None:
            raise ZocaloError(f"service {self.name} keeps messages only under a runner")
        return self._runner

    def status_note(self) -> str | None:
        """A few words for the status broadcast when an operator should know something
        (e.g. that the service waits for its database); None when all is well.

        Called from the status thread while a handler may run: read, never block.
        """
        return None

    # -- handlers ------------------------------------------------------------
    def add_handler(self, queue: str, function: HandlerFunction, **options: Any) -> None:
        """Register a handler at run time (e.g. from ``initializing``)."""
        self._extra_handlers.append(HandlerSpec(queue, function, **options))

    def handlers(self) -> list[HandlerSpec]:
        """Every handler, bound to this instance."""
        bound: list[HandlerSpec] = []
        seen: set[str] = set()
        for klass in type(self).__mro__:
            for attribute, function in vars(klass).items():
                if attribute in seen:
                    continue
                seen.add(attribute)
                for spec in getattr(function, _SPEC_ATTRIBUTE, []):
                    bound.append(replace(spec, function=getattr(self, attribute)))
        return bound + self._extra_handlers
