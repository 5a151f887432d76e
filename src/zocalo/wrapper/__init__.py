"""Wrappers: long jobs run from a recipe step, reporting back through the same recipe.

A wrapper runs a program that knows nothing of Zocalo (often on a cluster node)
and reports through its step's named outputs (``starting``, ``updates``,
``success``, ``failure``, ``completed``...). ``zocalo.wrap --wrap NAME
--recipewrapper FILE`` runs one; ``NAME`` is an entry point of the
``zocalo.wrappers`` group, as in python-zocalo.

Names load on first use, so that ``zocalo.wrapper.slurm`` (used by the cluster
submission service) does not load the wrappers themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zocalo.wrapper.base import BaseWrapper
    from zocalo.wrapper.command import CommandWrapper
    from zocalo.wrapper.live_step import LiveRecipeWrapper

_HOMES = {
    "BaseWrapper": "zocalo.wrapper.base",
    "CommandWrapper": "zocalo.wrapper.command",
    "LiveRecipeWrapper": "zocalo.wrapper.live_step",
}

__all__ = ["BaseWrapper", "CommandWrapper", "LiveRecipeWrapper"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'zocalo.wrapper' has no attribute {name!r}")
