"""Demo stages that go wrong, to show that ``zocalo demo`` notices: one loses an image of
every data collection, one sends its summary twice, one's jobs hang (to interrupt the demo
while they run). Run as ``demo_faults:NAME`` stand-ins (``DemoSettings.replace``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from zocalo.examples.demo_services import FindSpots, Summary
from zocalo.recipe.step import RecipeStep
from zocalo.service import handler
from zocalo.services.cluster_submission import ClusterSubmission
from zocalo.wrapper.backends.base import JobRequest


class LosesImageTwo(FindSpots):
    """Acknowledges image 2 and sends nothing on: the image is gone."""

    @handler("demo.find_spots", prefetch=4)
    def find_spots(self, step: RecipeStep, payload: Any) -> None:
        if payload.get("image") != 2:
            super().find_spots(step, payload)


class SummarisesTwice(Summary):
    """Sends each collection's summary on twice."""

    @handler("demo.summary", prefetch=10)
    def summarise(self, step: RecipeStep, payload: Any) -> None:
        super().summarise(step, payload)
        super().summarise(step, payload)


class HangingJobs(ClusterSubmission):
    """Submits each job with a long sleep before its script (which then never ends)."""

    def initializing(self) -> None:
        super().initializing()
        assert self.backend is not None
        submit = self.backend.submit

        def hang_first(request: JobRequest) -> int:
            shebang, _, rest = request.script.partition("\n")
            return submit(dataclasses.replace(request, script=f"{shebang}\nsleep 600\n{rest}"))

        self.backend.submit = hang_first  # type: ignore[method-assign]
