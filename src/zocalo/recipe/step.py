"""The step handle a handler receives: where it is in the recipe, and how to send on.

Sends are *collected*, not published: the runner publishes them all together
with the acknowledgement of the input, so a handler that fails half-way sends
nothing. Unlike python-workflows, sending to a channel the step does not have
is logged and counted (``step.unrouted``), never silently dropped.

A handler needs no transaction: the runner's publish of ``step.outputs`` with
the input's ack already is one. A send given python-workflows' explicit
``transaction=txn`` goes into that transaction of the step's transport instead
of ``step.outputs`` (published when the caller commits it, dropped if it
aborts); a step without a transport refuses it. ``transaction=None`` is the
same as leaving it out.

``step.reply(payload)`` sends a result back to whoever started the job and waits
for it (``zocalo.go --wait``): to the queue the environment's ``zocalo_reply_to``
names, as a droppable output (see ``Outgoing``), so a caller that has gone never
holds up, fails or repeats the step.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from zocalo.recipe.model import Recipe
from zocalo.recipe.validation import link_targets, short_repr
from zocalo.recipe.wire import (
    REPLY_ID_HEADER,
    REPLY_TO,
    RecipeEncoder,
    RecipeMessage,
    Reply,
    dumps,
    recipe_headers,
)
from zocalo.transport.base import SENDER_RECIPE_HEADER, SENDER_STEP_HEADER, Outgoing

if TYPE_CHECKING:
    from zocalo.transport.base import Transport

log = logging.getLogger("zocalo.recipe.step")


class RecipeStep:
    """Handle on the current message's step, given to handlers as ``step``.

    For a message without a recipe (a plain message) ``recipe`` is None:
    ``send``/``send_to``/``checkpoint`` then have nowhere to go (logged and
    counted), but ``start`` and ``send_plain`` work.

    ``transport`` is the connection whose transactions ``transaction=`` names
    (see the module docstring); without it, sends can only be collected.
    """

    def __init__(
        self,
        message: RecipeMessage | None = None,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str = "",
        transport: Transport | None = None,
    ) -> None:
        self.message = message
        self.transport = transport
        self.headers: dict[str, Any] = dict(headers or {})
        self.message_id = message_id
        self.outputs: list[Outgoing] = []
        #: Replies made so far: each one's number in this handling of the message.
        self._replies = 0
        self.unrouted: list[str] = []
        self.default_channel: str | None = None
        #: The recipe was cancelled (``zocalo cancel``). Only a handler registered with
        #: ``sees_cancelled=True`` ever sees it set: others never get such a message.
        self.cancelled = False
        self._encoder: RecipeEncoder | None = None

    # -- where we are -------------------------------------------------------
    @property
    def recipe(self) -> Recipe | None:
        return self.message.recipe if self.message else None

    @property
    def pointer(self) -> int | None:
        return self.message.pointer if self.message else None

    @property
    def path(self) -> list[int]:
        return list(self.message.path) if self.message else []

    @property
    def environment(self) -> dict[str, Any]:
        return self.message.environment if self.message else {}

    @property
    def recipe_id(self) -> str | None:
        return self.message.recipe_id if self.message else None

    @property
    def step(self) -> dict[str, Any]:
        """The current step's dict (empty for plain messages)."""
        return self.message.step if self.message else {}

    @property
    def parameters(self) -> dict[str, Any]:
        return self.step.get("parameters") or {}

    def __repr__(self) -> str:
        return f"<RecipeStep {self.pointer} of recipe {self.recipe_id}>"

    # -- sending on ---------------------------------------------------------
    def set_default_channel(self, channel: str) -> None:
        """Make ``send()`` go to named ``channel`` (as python-workflows allows)."""
        self.default_channel = channel

    def send(
        self, payload: Any, *, headers: Mapping[str, Any] | None = None, **options: Any
    ) -> int:
        """Send ``payload`` to the step's unnamed outputs; returns messages queued."""
        output = self.step.get("output")
        if isinstance(output, dict):
            if self.default_channel is not None:
                return self.send_to(self.default_channel, payload, headers=headers, **options)
            return self._unrouted(
                "send()",
                f"the step has only named output channels {sorted(output)} and no default channel",
            )
        if not output:
            # The end of a chain: nothing to send is normal, not a mistake.
            log.debug("step %s has no output; %s sends nothing", self.pointer, self.recipe_id)
            return 0
        return self._send_to_steps(self._targets(output), payload, headers, options)

    def send_to(
        self,
        channel: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> int:
        """Send ``payload`` to the named output ``channel``; returns messages queued."""
        output = self.step.get("output")
        if isinstance(output, dict) and channel in output:
            return self._send_to_steps(
                self._targets(output[channel], channel), payload, headers, options
            )
        if output and not isinstance(output, dict) and channel == self.default_channel:
            return self._send_to_steps(self._targets(output), payload, headers, options)
        known = sorted(output) if isinstance(output, dict) else []
        return self._unrouted(
            f"send_to({channel!r})",
            f"the step has no output channel {channel!r} (channels: {known})",
        )

    def send_to_error(
        self, payload: Any, *, headers: Mapping[str, Any] | None = None, **options: Any
    ) -> int:
        """Send ``payload`` to the recipe's error steps (its top-level ``error``)."""
        recipe = self.recipe
        if recipe is None or not recipe.error:
            return self._unrouted("send_to_error()", "the recipe has no error steps")
        targets = link_targets(recipe.error, "recipe field 'error'")
        return self._send_to_steps(targets, payload, headers, options)

    def checkpoint(
        self,
        payload: Any,
        *,
        delay: float | None = None,
        headers: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> int:
        """Send ``payload`` back to this same step, e.g. to poll again after ``delay``."""
        if self.message is None:
            return self._unrouted("checkpoint()", "a plain message has no step to return to")
        options["delay"] = delay or None
        return self._queue_hop(
            self.message.pointer, list(self.message.path), payload, headers, options
        )

    def start(
        self,
        recipe: Recipe | Mapping[str, Any],
        *,
        environment: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Begin ``recipe``: one message per ``start`` entry. Returns the recipe ID.

        The environment gets an ``ID`` (a fresh uuid4) unless it has one.
        """
        recipe = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
        recipe.validate()
        env = dict(environment or {})
        env.setdefault("ID", str(uuid.uuid4()))
        encoder = RecipeEncoder(recipe)
        for pointer, payload in recipe.start or ():  # validated: a recipe has a start
            self._queue_step(recipe, encoder, int(pointer), [], env, payload, headers, options)
        return env["ID"]

    def reply(self, payload: Any, *, transaction: int | None = None) -> int:
        """Send ``payload`` back to the caller waiting for this job's results; returns
        the messages queued (1, or 0 when nobody waits).

        The reply is published with the step's other outputs, as they are. A job that
        nobody waits for has no reply queue, and sends nothing (a debug line: a recipe
        may reply whether or not anyone listens). A caller that has gone since is no
        failure either: the broker drops the reply with a log line, and the step's
        other outputs and the acknowledgement of its input go through.

        Each reply carries an identity (:data:`~zocalo.recipe.wire.REPLY_ID_HEADER`):
        the input's message id and the reply's number in this call, the same when a
        redelivered input is handled again, so the caller counts it once.
        """
        reply_to = self.environment.get(REPLY_TO)
        if reply_to is None:
            log.debug("recipe %s: nobody waits for replies; reply() sends nothing", self.recipe_id)
            return 0
        if not isinstance(reply_to, str) or not reply_to:
            return self._unrouted(
                "reply()",
                f"the environment's {REPLY_TO!r} is {short_repr(reply_to)}, not a queue name",
            )
        body = Reply(payload, self.recipe_id, self.pointer).encode()
        self._replies += 1
        headers = {
            SENDER_RECIPE_HEADER: self.recipe_id,
            SENDER_STEP_HEADER: self.pointer,
            REPLY_ID_HEADER: f"{self.message_id}#{self._replies}" if self.message_id else None,
        }
        headers = {name: value for name, value in headers.items() if value is not None}
        self._emit([Outgoing(reply_to, body, headers, droppable=True)], transaction)
        return 1

    def send_plain(
        self,
        queue: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Send a JSON message that is not part of a recipe (e.g. to ``processing_recipe``)."""
        message = Outgoing(
            queue, dumps(payload).encode(), dict(headers or {}), **_transport_options(options)
        )
        self._emit([message], options.get("transaction"))

    # -- internals ----------------------------------------------------------
    def _targets(self, links: Any, channel: str | None = None) -> list[int]:
        """The step ids ``links`` names (InvalidRecipe for a link that is no step id)."""
        where = f"step {self.pointer} field 'output'"
        return link_targets(links, where if channel is None else f"{where} channel {channel!r}")

    def _unrouted(self, call: str, why: str) -> int:
        log.warning(
            "%s on step %s of recipe %s (%s) sent nothing: %s",
            call,
            self.pointer,
            self.recipe_id,
            self.message_id,
            why,
        )
        self.unrouted.append(f"{call}: {why}")
        return 0

    def _send_to_steps(
        self,
        targets: Iterable[int],
        payload: Any,
        headers: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> int:
        assert self.message is not None
        path = [*self.message.path, self.message.pointer]
        return sum(self._queue_hop(target, path, payload, headers, options) for target in targets)

    def _queue_hop(
        self,
        target: int,
        path: list[int],
        payload: Any,
        headers: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> int:
        assert self.message is not None
        if self._encoder is None:
            self._encoder = RecipeEncoder(self.message.recipe)
        return self._queue_step(
            self.message.recipe,
            self._encoder,
            target,
            path,
            self.message.environment,
            payload,
            headers,
            options,
        )

    def _queue_step(
        self,
        recipe: Recipe,
        encoder: RecipeEncoder,
        target: int,
        path: list[int],
        environment: Mapping[str, Any],
        payload: Any,
        headers: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> int:
        """Queue one message per destination kind (queue and/or topic) of step ``target``."""
        step = recipe[target]
        transport_options = _transport_options(options)
        if transport_options.get("delay") is None and step.get("transport-delay"):
            transport_options["delay"] = float(step["transport-delay"])
        body = encoder.body(target, path, environment, payload)
        all_headers = recipe_headers(headers)
        messages: list[Outgoing] = []
        if step.get("queue"):
            messages.append(Outgoing(step["queue"], body, all_headers, **transport_options))
        if step.get("topic"):
            topic_options = {k: v for k, v in transport_options.items() if k != "priority"}
            messages.append(
                Outgoing(step["topic"], body, dict(all_headers), broadcast=True, **topic_options)
            )
        if not messages:
            self._unrouted(f"message to step {target}", "that step has neither queue nor topic")
        self._emit(messages, options.get("transaction"))
        return len(messages)

    def _emit(self, messages: list[Outgoing], transaction: int | None) -> None:
        """Collect ``messages`` in ``outputs``, or add them to ``transaction``."""
        if transaction is None:
            self.outputs.extend(messages)
            return
        if self.transport is None:
            raise ValueError(
                f"transaction={transaction!r} given, but this step has no transport to hold "
                "it: build it as RecipeStep(..., transport=...) with the transport that began "
                "the transaction, or leave transaction= out and publish step.outputs"
            )
        self.transport.transaction_add(transaction, *messages)


def _transport_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the per-message options a transport understands; refuse anything else."""
    allowed = {"delay", "priority", "expiration"}
    unknown = set(options) - allowed - {"transaction"}  # transaction: see _emit
    if unknown:
        raise TypeError(f"unknown send options {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {key: options[key] for key in allowed if options.get(key) is not None}
