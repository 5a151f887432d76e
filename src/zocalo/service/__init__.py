"""Services: the base class, handler registration, the runner, its middleware and discovery.

Everything loads on first use, so that a supervisor (whose module lives in
this package) stays small.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zocalo.service.base import HandlerSpec, Service, handler
    from zocalo.service.middleware import Middleware
    from zocalo.service.runner import ServiceRunner
    from zocalo.service.runner_settings import RunnerSettings, RunnerStats

_HOMES = {
    "HandlerSpec": "zocalo.service.base",
    "Service": "zocalo.service.base",
    "handler": "zocalo.service.base",
    "Middleware": "zocalo.service.middleware",
    "RunnerSettings": "zocalo.service.runner_settings",
    "RunnerStats": "zocalo.service.runner_settings",
    "ServiceRunner": "zocalo.service.runner",
}

__all__ = [
    "HandlerSpec",
    "Middleware",
    "RunnerSettings",
    "RunnerStats",
    "Service",
    "ServiceRunner",
    "handler",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'zocalo.service' has no attribute {name!r}")
