"""The service the fuzz test runs in a real worker process (``fuzz_services:Echo``)."""

from __future__ import annotations

from typing import Any

from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, handler

QUEUE = "fuzz"
RECEIPTS = "fuzz.handled"
#: Header carrying the number of the fuzz message a delivery descends from.
NUMBER = "fuzz-n"
#: Header set on every message the service itself sends on (a hop, not an original).
HOP = "fuzz-hop"


class Echo(Service):
    """Sends every payload on along every output link, then a receipt for the test.

    The receipt says which fuzz message this was, whether it was the original
    (not a later hop), and how many of its outputs came back to this queue, so
    the test can account for every message the service received.
    """

    @handler(QUEUE, prefetch=20)
    def echo(self, step: RecipeStep, payload: Any) -> None:
        number = step.headers.get(NUMBER)
        onward = {NUMBER: number, HOP: True}
        output = step.step.get("output")
        if isinstance(output, dict):
            for channel in output:
                step.send_to(channel, payload, headers=onward)
        else:
            step.send(payload, headers=onward)
        back = sum(1 for out in step.outputs if out.destination == QUEUE and not out.broadcast)
        receipt = {"n": number, "original": HOP not in step.headers, "back": back}
        step.send_plain(RECEIPTS, receipt)
