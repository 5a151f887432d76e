"""Services the monitor tests run in real worker processes (``monitor_services:Name``)."""

from __future__ import annotations

from typing import Any

from zocalo.recipe.step import RecipeStep
from zocalo.service import Service, handler


class Echo(Service):
    """Passes every message straight on."""

    @handler("monitor.echo", prefetch=10)
    def echo(self, step: RecipeStep, payload: Any) -> None:
        step.send(payload)


class Broken(Service):
    """Fails on every message: retried, then dead-lettered."""

    @handler("monitor.broken")
    def fail(self, step: RecipeStep, payload: Any) -> None:
        raise RuntimeError("broken on purpose")
