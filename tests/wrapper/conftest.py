"""Fixtures for wrapper tests (helpers in :mod:`wrapping`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from wrapping import CHANNELS, Outputs, recipe_body, wrapped_recipe

from zocalo.transport import Transport
from zocalo.wrapper.live_step import LiveRecipeWrapper


@pytest.fixture
def outputs(client: Transport, collector: Callable[..., Any]) -> Outputs:
    return Outputs(client, collector)


@pytest.fixture
def live_step(client: Transport) -> Callable[..., LiveRecipeWrapper]:
    """``live_step(parameters, payload=..., channels=...)``: a step to hand a wrapper."""

    def make(
        parameters: dict[str, Any] | None = None,
        payload: Any = None,
        channels: tuple[str, ...] = tuple(CHANNELS),
        step: dict[str, Any] | None = None,
    ) -> LiveRecipeWrapper:
        recipe = wrapped_recipe(parameters, channels, step)
        return LiveRecipeWrapper.from_body(recipe_body(recipe, payload), client)

    return make
