"""The recipe-ID log context: lines logged while a message is in hand carry its recipe.

Every log record made between ``before_message`` and ``after_message`` (the
handler's, the runner's failure lines, other middleware's) carries the
message's recipe ID and step as ``recipe_ID`` and ``recipe_step`` (see
:class:`zocalo.logs.RecipeContextFilter`), so one job can be followed
across services. An invalid message has none.
"""

from __future__ import annotations

import contextvars
from typing import Any

from zocalo.logs import recipe_id_var, recipe_step_var
from zocalo.service.middleware.base import InHand, Middleware, Runner


class LogContext(Middleware):
    """Sets the recipe context for the message in hand, and restores it afterwards."""

    def __init__(self) -> None:
        # One message at a time per runner: the tokens of the one in hand.
        self._tokens: tuple[contextvars.Token[Any], contextvars.Token[Any]] | None = None

    def before_message(self, runner: Runner, message: InHand) -> None:
        step = message.step
        if step is None:
            self._tokens = (recipe_id_var.set(None), recipe_step_var.set(None))
        else:
            self._tokens = (recipe_id_var.set(step.recipe_id), recipe_step_var.set(step.pointer))

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        if self._tokens is not None:
            id_token, step_token = self._tokens
            self._tokens = None
            recipe_id_var.reset(id_token)
            recipe_step_var.reset(step_token)
