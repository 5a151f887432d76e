"""The recipe-ID log context: lines logged while a message is in hand carry its recipe.

Every log record made between ``before_message`` and ``after_message`` (the
handler's, the runner's failure lines, other middleware's) carries the
message's recipe ID and step as ``recipe_ID`` and ``recipe_step`` (see
:class:`zocalo.logs.RecipeContextFilter`), so one job can be followed
across services. An invalid message has none. A message its handler kept leaves the context
when its handler returns (``on_kept``), not when it is settled later.
"""

from __future__ import annotations

import contextvars
from typing import Any

from zocalo.logs import recipe_id_var, recipe_step_var
from zocalo.service.middleware.base import InHand, Middleware, Runner


class LogContext(Middleware):
    """Sets the recipe context for the message in hand, and restores it afterwards."""

    def __init__(self) -> None:
        # One message at a time per runner: the one in hand, and its tokens.
        self._message: InHand | None = None
        self._tokens: tuple[contextvars.Token[Any], contextvars.Token[Any]] | None = None

    def before_message(self, runner: Runner, message: InHand) -> None:
        step = message.step
        self._message = message
        if step is None:
            self._tokens = (recipe_id_var.set(None), recipe_step_var.set(None))
        else:
            self._tokens = (recipe_id_var.set(step.recipe_id), recipe_step_var.set(step.pointer))

    def on_kept(self, runner: Runner, message: InHand) -> None:
        self._leave(message)

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        self._leave(message)

    def _leave(self, message: InHand) -> None:
        """Restore the context ``message`` found, if it is the one in hand (a kept
        message settled later, while another is in hand, leaves that one's alone)."""
        if self._tokens is not None and message is self._message:
            id_token, step_token = self._tokens
            self._tokens = self._message = None
            recipe_id_var.reset(id_token)
            recipe_step_var.reset(step_token)
