"""A job that fans out and replies to its caller: ``Fanout`` splits it into parts, ``Answer``
replies once per part and sends the part on. Run on threads by the tests, and as
``zocalo.service -s replying_services:NAME`` (this directory on the services' PYTHONPATH).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zocalo import Service, handler
from zocalo.recipe.step import RecipeStep

FANOUT, ANSWER, DONE = "replies.fanout", "replies.answer", "replies.done"
CRASHING = "replies.crashing"

#: Fanout -> Answer (one message per part; each replies) -> DONE, which nobody consumes.
RECIPE = {
    "1": {"service": "Fan out", "queue": FANOUT, "output": 2},
    "2": {"service": "Answer", "queue": ANSWER, "output": 3},
    "3": {"service": "Done", "queue": DONE},
    "start": [[1, {"parts": "{$REPLACE:parts}"}]],
}


class Fanout(Service):
    @handler(FANOUT)
    def split(self, step: RecipeStep, payload: Any) -> None:
        for part in range(int(payload["parts"])):
            step.send({"part": part})


class Answer(Service):
    @handler(ANSWER, prefetch=5)
    def answer(self, step: RecipeStep, payload: Any) -> None:
        step.reply({"part": payload["part"], "squared": payload["part"] ** 2})
        step.send(payload)


#: One step, ReplyThenCrash, whose start payload names its marker file.
CRASHING_RECIPE = {
    "1": {"service": "Reply then crash", "queue": CRASHING},
    "start": [[1, {"marker": "{$REPLACE:marker}"}]],
}


class ReplyThenCrash(Service):
    """Replies "a" and "b" at once, each in a transaction it commits (as a python-workflows
    service may), then, the first time (no marker file yet), dies before its input is
    acknowledged. Handling the redelivered input, it replies "a" and "b" again, then "c"."""

    @handler(CRASHING)
    def reply_then_crash(self, step: RecipeStep, payload: Any) -> None:
        assert step.transport is not None
        for part in ("a", "b"):
            transaction = step.transport.transaction_begin()
            step.reply(part, transaction=transaction)
            step.transport.transaction_commit(transaction)
        marker = Path(payload["marker"])
        if not marker.exists():
            marker.touch()
            os._exit(3)
        step.reply("c")
