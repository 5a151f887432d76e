"""The demo's long job: integrate a data collection's spots, as a program run by a wrapper.

Three parts, as at a facility:

* the program, :mod:`zocalo.examples.integrate`, which knows nothing of Zocalo;
* the wrapper :class:`Integrate` (``zocalo.wrap --wrap demo.integrate``), a
  :class:`~zocalo.wrapper.command.CommandWrapper` whose step parameters name that
  program; its ``success`` output is the collection's summary with the program's
  results added (and ``times.integrated_at``), so the recipe carries on to the database;
* :class:`IntegrateHere`, a stand-in for the cluster submission service when the demo
  runs on an in-process broker (``memory://``), which no job process could reach: it
  runs the same wrapper on the service's thread.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from zocalo import RecipeStep, Service, handler
from zocalo.wrapper.command import CommandWrapper
from zocalo.wrapper.live_step import LiveRecipeWrapper

if TYPE_CHECKING:
    from zocalo.transport.base import Transport

#: The queue of the demo recipe's wrapped step (the cluster submission service's).
QUEUE = "cluster.submission"


class Integrate(CommandWrapper):
    """Runs the integration program; sends the summary on with its results added."""

    _logger_name = "zocalo.examples.integration"

    def parameters(self) -> dict[str, Any]:
        """The step's, and ``{python}``: the wrapper's own interpreter (the demo's
        program is installed with Zocalo, wherever the job's ``PATH`` leads)."""
        return {**super().parameters(), "python": sys.executable}

    def run(self) -> bool:
        if not super().run():
            return False
        report, payload = self.result, self.recwrap.payload if self.recwrap else None
        try:
            found = json.loads(report["stdout"].splitlines()[-1])
            results = {"intensity": int(found["intensity"])}
            results["strongest_image"] = int(found["strongest_image"])
        except (LookupError, TypeError, ValueError):
            self.failure_reason = f"the integration printed no result: {report['stdout']!r}"
            return False
        summary = payload if isinstance(payload, dict) else {}
        times = {**summary.get("times", {}), "integrated_at": time.time()}
        self.result = {**summary, **results, "integration_s": report["elapsed"], "times": times}
        self.log.info("integrated: intensity %d", results["intensity"])
        return True


class _StepRecipeWrapper(LiveRecipeWrapper):
    """A wrapper's recipe step that sends through a handler's step (published with the
    input's acknowledgement) instead of at once."""

    def __init__(self, step: RecipeStep) -> None:
        assert step.message is not None
        super().__init__(step.message, cast("Transport", None))
        self.step = step

    def _publish(self, sends: Callable[[RecipeStep], Any]) -> int:
        return int(sends(self.step))


class IntegrateHere(Service):
    """The demo's wrapped step on an in-process broker: the wrapper, on this thread."""

    @handler(QUEUE, prefetch=2)
    def integrate(self, step: RecipeStep, payload: Any) -> None:
        wrapper = Integrate()
        wrapper.set_recipe_wrapper(_StepRecipeWrapper(step))
        if wrapper.run():
            wrapper.success(wrapper.result)
        else:
            wrapper.failure(wrapper.failure_reason)
