"""A recipe step that sends at once: what a wrapper holds instead of a service's step.

A service's :class:`~zocalo.recipe.step.RecipeStep` only *collects* its sends:
the runner publishes them with the acknowledgement of the input. A wrapper has
no input to acknowledge and runs for hours, so each send here is published at
once and waited for (the broker has it before the wrapper goes on).

The names follow python-workflows' ``RecipeWrapper`` (``recipe_step``,
``recipe_pointer``, ``send_to``...), so a facility's wrapper code that reads
``self.recwrap`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zocalo.errors import InvalidMessage
from zocalo.recipe import wire
from zocalo.recipe.model import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.transport.base import Transport

#: Seconds a send waits for the broker to accept it.
SEND_TIMEOUT = 60.0


class LiveRecipeWrapper:
    """One recipe message (recipe, step, path, environment, payload) and a connection."""

    def __init__(
        self, message: wire.RecipeMessage, transport: Transport, *, timeout: float = SEND_TIMEOUT
    ) -> None:
        self.message = message
        self.transport = transport
        self.timeout = timeout
        self.default_channel: str | None = None

    @classmethod
    def from_body(
        cls, body: Mapping[str, Any] | str | bytes, transport: Transport, *, what: str = "message"
    ) -> LiveRecipeWrapper:
        """From a recipe message body (a dict, or its JSON text); InvalidMessage if unusable."""
        text = body if isinstance(body, str | bytes) else wire.dumps(body)
        message = wire.decode(text, {wire.RECIPE_HEADER: True}, what)
        return cls(message, transport)

    @classmethod
    def from_file(cls, path: str | Path, transport: Transport) -> LiveRecipeWrapper:
        """From a recipe-wrapper file (a complete recipe message body, as JSON)."""
        what = f"recipe-wrapper file {path}"
        try:
            text = Path(path).read_bytes()
        except OSError as error:
            raise InvalidMessage(f"{what}: cannot be read ({error.strerror or error})") from None
        return cls.from_body(text, transport, what=what)

    # -- python-workflows' RecipeWrapper names --------------------------------
    @property
    def recipe(self) -> Recipe:
        return self.message.recipe

    @property
    def recipe_pointer(self) -> int:
        return self.message.pointer

    @property
    def recipe_path(self) -> list[int]:
        return list(self.message.path)

    @property
    def recipe_step(self) -> dict[str, Any]:
        return self.message.step

    @property
    def environment(self) -> dict[str, Any]:
        return self.message.environment

    @property
    def payload(self) -> Any:
        return self.message.payload

    @property
    def recipe_id(self) -> str | None:
        return self.message.recipe_id

    @property
    def parameters(self) -> dict[str, Any]:
        return self.recipe_step.get("parameters") or {}

    def channels(self) -> list[str]:
        """The step's named output channels."""
        output = self.recipe_step.get("output")
        return sorted(output) if isinstance(output, dict) else []

    def has_channel(self, channel: str) -> bool:
        """True when ``send_to(channel)`` would send something."""
        output = self.recipe_step.get("output")
        if isinstance(output, dict):
            return channel in output
        return bool(output) and channel == self.default_channel

    def set_default_channel(self, channel: str) -> None:
        self.default_channel = channel

    # -- sending --------------------------------------------------------------
    def send(self, payload: Any, header: Mapping[str, Any] | None = None, **options: Any) -> int:
        """Send to the step's unnamed outputs now; returns the messages sent."""
        return self._publish(lambda step: step.send(payload, headers=header, **options))

    def send_to(
        self, channel: str, payload: Any, header: Mapping[str, Any] | None = None, **options: Any
    ) -> int:
        """Send to the named output ``channel`` now; returns the messages sent."""
        return self._publish(lambda step: step.send_to(channel, payload, headers=header, **options))

    def checkpoint(
        self, payload: Any, header: Mapping[str, Any] | None = None, **options: Any
    ) -> int:
        """Send ``payload`` back to this same step now."""
        return self._publish(lambda step: step.checkpoint(payload, headers=header, **options))

    def reply(self, payload: Any) -> int:
        """Send ``payload`` now to the caller waiting for this job's results (``zocalo.go
        --wait``); 0 when nobody waits (see :meth:`RecipeStep.reply`)."""
        return self._publish(lambda step: step.reply(payload))

    def _publish(self, sends: Any) -> int:
        step = RecipeStep(self.message, transport=self.transport)
        if self.default_channel is not None:
            step.set_default_channel(self.default_channel)
        sent = sends(step)
        if step.outputs:
            self.transport.publish(step.outputs).result(self.timeout)
        return int(sent)

    def describe(self) -> str:
        return f"step {self.recipe_pointer} of recipe {self.recipe_id}"

    def to_json(self) -> str:
        """The recipe message body, as a recipe-wrapper file holds it."""
        body = wire.encode(
            self.recipe, self.recipe_pointer, self.recipe_path, self.environment, self.payload
        )
        return body.decode("utf-8")
