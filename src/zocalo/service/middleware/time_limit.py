"""Handler time limits: the supervisor hears of each limited message, and of its end.

The limit is enforced from outside, by the supervisor, which replaces the
worker process at the deadline: no thread of ours could stop a handler stuck
in C code that holds the GIL. The message, never acknowledged, is delivered
again. This middleware only reports: ``in_hand`` (with the handler, the limit
and when the message was taken in hand) before a limited handler runs, and
``done`` once its message is settled, or kept by its handler (the limit is on
the handler: a kept message waits for its group unlimited).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zocalo.service.middleware.base import InHand, Middleware, Runner


class TimeLimit(Middleware):
    """Report limited messages through ``report(event, **details)`` (the supervisor link).

    Installed for every service: handlers added at run time, in
    ``initializing``, may have limits too.
    """

    def __init__(self, report: Callable[..., Any]) -> None:
        self.report = report
        #: The limited message in hand, once reported.
        self._reported: InHand | None = None

    def before_message(self, runner: Runner, message: InHand) -> None:
        spec = message.spec
        if spec.time_limit is None:
            return
        step = message.step
        self.report(
            "in_hand",
            message=message.delivery.describe(),
            recipe=step.recipe_id if step is not None else None,
            step=step.pointer if step is not None else None,
            handler=spec.function.__qualname__,
            limit=spec.time_limit,
            started=message.since,
        )
        self._reported = message

    def on_kept(self, runner: Runner, message: InHand) -> None:
        self._done(message)

    def after_message(self, runner: Runner, message: InHand, outcome: str, seconds: float) -> None:
        self._done(message)

    def _done(self, message: InHand) -> None:
        """Its handler is through with the message in hand (a kept one settled later,
        while another is in hand, is not that one)."""
        if self._reported is message:
            self._reported = None
            self.report("done")
