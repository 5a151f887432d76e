"""Services: the base class, handler registration, the runner and discovery.

The runner and its dependencies load on first use, so that a supervisor
(which imports this package for discovery) stays small.
"""

from __future__ import annotations

import importlib
from typing import Any

from zocalo.service.base import HandlerSpec, Service, handler

_LAZY = {"RunnerSettings", "RunnerStats", "ServiceRunner"}

__all__ = ["HandlerSpec", "RunnerSettings", "RunnerStats", "Service", "ServiceRunner", "handler"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("zocalo.service.runner"), name)
    raise AttributeError(f"module 'zocalo.service' has no attribute {name!r}")
