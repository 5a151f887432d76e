"""``zocalo.dlq_reinject``: send dead letters from files back where they came from.

Where to (the first that applies):

1. ``destination`` (``-d``): that queue (``/queue/NAME`` and ``/topic/NAME``, as
   python-zocalo's STOMP files name them, are understood too);
2. ``step`` (``--step N``, ours): the queue (and/or topic) of step N of the message's
   own recipe, the message restarting there (see :func:`restart_at`);
3. RabbitMQ's ``x-death`` (the broker dead-lettered it): its newest entry tells the
   queue it died in, and the exchange and routing keys it was published with on the
   way there (the delivered message's own exchange is only the dead-letter one). A
   named exchange gets it again with that routing key (the rest of the keys as
   ``CC``), so it reaches every queue that exchange routes the key to now, as the
   first time: the queue it died in, and any other bound alike, again. The default
   exchange, and the exchanges that only delayed it (python-workflows' ``delayed``,
   our delay levels), send it to the queue it died in. python-zocalo's tool looked the
   exchange up among the *queues* and so resent nothing that came through a named
   exchange. Only RabbitMQ has exchanges: for another broker (``through_exchanges``
   false) it goes to the queue it died in;
4. our ``zocalo-dlq-queue`` (the runner or the embedded broker dead-lettered it);
5. ActiveMQ's ``original-destination`` / ``destination`` (python-zocalo's files from
   ActiveMQ): the queue or topic named there, less the broker's prefix when reinjecting
   into ActiveMQ (:func:`activemq_names`), in full elsewhere.

Headers: python-zocalo's tool drops the transport's own fields (message id, routing
key, redelivered flag, ...) and adds ``dlq-reinjected: "True"``; so do we, and every
other STOMP or ActiveMQ header (``persistent``, ``priority``, ``JMS...``: a file from
ActiveMQ has them; the transport sets its own). We also
drop the broker's ``x-death`` family (RabbitMQ would take a message carrying its old
``x-death`` for a dead-letter cycle and drop it) and the dead-letter marks and attempt
count our runner added: a reinjected message starts with fresh attempts, keeping its
``zocalo-dlq-history``. Header values keep their JSON types (python-zocalo turned
every value into a string, ``x-death`` included).

Every file is read and checked before anything is sent: one that cannot be parsed, or
whose destination cannot be worked out, stops the run with an error naming it, and
nothing is sent. A file is deleted (``remove``) only once the broker confirmed its
message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocalo.dlq.drain import STOMP_FIELDS
from zocalo.dlq.errors import CannotReinject
from zocalo.dlq.files import MESSAGE_ID_HEADER, DeadLetterFile, read_dead_letter
from zocalo.errors import InvalidMessage, ZocaloError
from zocalo.recipe import wire
from zocalo.service.middleware.base import ATTEMPT_HEADER
from zocalo.service.middleware.dead_letter import RECIPE_PATH_HEADER
from zocalo.service.middleware.retries import RETRY_REASON_HEADER
from zocalo.transport.base import Outgoing, Transport
from zocalo.transport.dead_letters import (
    DLQ_QUEUE_HEADER,
    DLQ_REASON_HEADER,
    without_broker_headers,
)
from zocalo.transport.rabbitmq.delay import only_delays
from zocalo.transport.stomp.headers import is_protocol_header

#: The header python-zocalo adds to a reinjected message, with its value.
REINJECTED_HEADER = "dlq-reinjected"
REINJECTED_VALUE = "True"
#: What python-zocalo's tool drops: the pika transport's fields, and the STOMP ones.
PIKA_FIELDS = frozenset(
    {"message-id", "routing_key", "redelivered", "exchange", "consumer_tag", "delivery_mode"}
)
#: Ours: a reinjected message is no longer a dead letter, and its attempts start again.
RUNNER_FIELDS = frozenset(
    {DLQ_REASON_HEADER, DLQ_QUEUE_HEADER, ATTEMPT_HEADER, RETRY_REASON_HEADER, RECIPE_PATH_HEADER}
)
DROPPED_HEADERS = PIKA_FIELDS | STOMP_FIELDS | RUNNER_FIELDS | {MESSAGE_ID_HEADER}


@dataclass(frozen=True)
class Route:
    """Where one message goes: a queue, a topic (``broadcast``), or through a RabbitMQ
    ``exchange`` with ``destination`` as its routing key (and ``cc``, more keys)."""

    destination: str
    broadcast: bool = False
    exchange: str | None = None
    cc: tuple[str, ...] = ()

    def outgoing(self, body: bytes, headers: Mapping[str, Any]) -> Outgoing:
        extra = {"CC": list(self.cc)} if self.cc else {}
        return Outgoing(
            self.destination, body, {**headers, **extra}, self.broadcast, exchange=self.exchange
        )


#: ``stomp_name(destination)``: our name of a STOMP destination (``/queue/...``,
#: ``/topic/...``) and whether it is a topic; None when it is not one.
StompName = Callable[[str], tuple[str, bool] | None]


def _full_stomp_name(destination: str) -> tuple[str, bool] | None:
    """The name in a STOMP destination, whole (python-zocalo added no prefix)."""
    kind, _, name = destination.removeprefix("/").partition("/")
    if destination.startswith("/") and kind in ("queue", "topic") and name:
        return name, kind == "topic"
    return None


def activemq_names(url: str) -> StompName:
    """How the ActiveMQ broker at ``url`` names our queues and topics (its prefix left
    out); ZocaloError for a URL the STOMP transport refuses."""
    from zocalo.transport.stomp.topology import Destinations
    from zocalo.transport.stomp.url import endpoint

    return Destinations(endpoint(url)[0].prefix).name_of


@dataclass(frozen=True)
class Reinjection:
    """One file's message(s), ready to send."""

    path: Path
    messages: list[Outgoing]

    def describe(self) -> str:
        return " and ".join(message.describe() for message in self.messages)


def reinjected_headers(header: Mapping[str, Any]) -> dict[str, Any]:
    """The headers a reinjected message carries (see the module docstring)."""
    kept = {
        name: value
        for name, value in header.items()
        if name not in DROPPED_HEADERS and not is_protocol_header(name)
    }
    kept = without_broker_headers(kept)
    kept[REINJECTED_HEADER] = REINJECTED_VALUE
    return kept


def prepare(
    letter: DeadLetterFile,
    *,
    destination: str | None = None,
    step: int | None = None,
    through_exchanges: bool = True,
    stomp_name: StompName | None = None,
) -> Reinjection:
    """What to send for ``letter``; :class:`CannotReinject` naming the file if nothing."""
    headers = reinjected_headers(letter.header)
    body = letter.body()
    routes: list[Route] = []
    if step is not None:
        body, routes = restart_at(letter, step)
    if destination is not None:
        routes = [_named(destination)]
    elif not routes:
        routes = [origin(letter, through_exchanges, stomp_name)]
    messages = [route.outgoing(body, headers) for route in routes]
    return Reinjection(letter.path, messages)


def _named(destination: str) -> Route:
    """``-d NAME``: a queue, or ``/queue/NAME`` / ``/topic/NAME`` as STOMP names them."""
    name = _full_stomp_name(destination)
    return Route(*name) if name is not None else Route(destination)


def origin(
    letter: DeadLetterFile,
    through_exchanges: bool = True,
    stomp_name: StompName | None = None,
) -> Route:
    """Where ``letter`` came from (see the module docstring)."""
    header = letter.header
    deaths = header.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        route = _rabbitmq_origin(deaths[0], through_exchanges)
        if route is not None:
            return route
    queue = header.get(DLQ_QUEUE_HEADER)
    if isinstance(queue, str) and queue:
        return Route(queue)
    stomp = header.get("original-destination") or header.get("destination")
    if isinstance(stomp, str):
        name = (stomp_name or _full_stomp_name)(stomp)
        if name is not None:
            return Route(*name)
    raise CannotReinject(
        f"{letter.path}: cannot tell where it came from (no x-death, {DLQ_QUEUE_HEADER} or "
        "destination header); give a destination"
    )


def _rabbitmq_origin(death: Mapping[str, Any], through_exchanges: bool) -> Route | None:
    """The route of the newest ``x-death`` entry: the exchange and routing keys that
    took the message to the queue it died in; that queue if they only delayed it, are
    the default exchange, or are not there."""
    queue, exchange, keys = death.get("queue"), death.get("exchange"), death.get("routing-keys")
    if (
        through_exchanges
        and isinstance(exchange, str)
        and exchange
        and not only_delays(exchange)
        and isinstance(keys, list)
        and keys
        and all(isinstance(key, str) for key in keys)
    ):
        return Route(keys[0], exchange=exchange, cc=tuple(keys[1:]))
    if isinstance(queue, str) and queue:
        return Route(queue)
    return None


def restart_at(letter: DeadLetterFile, step: int) -> tuple[bytes, list[Route]]:
    """``letter``'s recipe message pointed at ``step`` instead: (body, routes).

    The message carries its whole recipe, so it can restart at any step. Its
    ``recipe-path`` is cut back to before that step's first visit, so that going on
    from there is not taken for a loop.
    """
    what = str(letter.path)
    if letter.encoding is not None or not wire.is_recipe_message(letter.header):
        raise CannotReinject(f"{what}: not a recipe message, so it has no step {step}")
    try:
        message = wire.decode(json.dumps(letter.message), letter.header, what)
    except InvalidMessage as error:
        raise CannotReinject(str(error)) from None
    steps = message.recipe.steps
    if step not in steps:
        raise CannotReinject(f"{what}: its recipe has no step {step} (steps: {sorted(steps)})")
    path = message.path[: message.path.index(step)] if step in message.path else message.path
    body = wire.encode(message.recipe, step, path, message.environment, message.payload)
    try:
        wire.decode(body, letter.header, what)
    except InvalidMessage as error:
        raise CannotReinject(f"cannot restart at step {step}: {error}") from None
    here = steps[step]
    routes = [Route(here[key], key == "topic") for key in ("queue", "topic") if here.get(key)]
    if not routes:
        raise CannotReinject(f"{what}: step {step} of its recipe has neither queue nor topic")
    return body, routes


def prepare_files(
    paths: Sequence[Path | str],
    *,
    destination: str | None = None,
    step: int | None = None,
    through_exchanges: bool = True,
    stomp_name: StompName | None = None,
) -> list[Reinjection]:
    """Read and check every file first: the first bad one raises, naming it."""
    return [
        prepare(
            read_dead_letter(path),
            destination=destination,
            step=step,
            through_exchanges=through_exchanges,
            stomp_name=stomp_name,
        )
        for path in paths
    ]


def reinject(
    transport: Transport,
    reinjections: Sequence[Reinjection],
    *,
    remove: bool = False,
    wait: float = 0.0,
    timeout: float = 30.0,
    on_sent: Callable[[Reinjection], None] | None = None,
) -> int:
    """Send each, waiting for the broker's confirmation (and ``wait`` s between files);
    with ``remove``, delete each file once its message is confirmed. Returns how many
    were sent. A refused message raises (naming its file); those before it were sent."""
    pause = threading.Event()
    for number, reinjection in enumerate(reinjections):
        if number and wait > 0:
            pause.wait(wait)
        try:
            transport.publish(reinjection.messages).result(timeout)
        except TimeoutError:
            raise CannotReinject(
                f"{reinjection.path}: the broker did not confirm {reinjection.describe()} "
                f"within {timeout:g} s; the file is kept (it may or may not have arrived)"
            ) from None
        except ZocaloError as error:
            raise CannotReinject(
                f"{reinjection.path}: not reinjected (the file is kept): {error}"
            ) from None
        if remove:
            reinjection.path.unlink(missing_ok=True)
        if on_sent is not None:
            on_sent(reinjection)
    return len(reinjections)
