"""Renumbering a recipe's steps so it can be appended to another one.

The ids match python-workflows exactly (the Dispatcher's merged recipes must
look the same on the wire): the appended steps take ``max(1, largest id) + 1``
onwards, in the order the appended recipe lists them. Unlike the reference,
nothing here modifies its inputs, and a ``null`` link stays ``null``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["first_free_id", "renumber"]

_LINK_FIELDS = ("output", "error")


def first_free_id(steps: Mapping[int, Any]) -> int:
    """The id the first appended step gets."""
    return max(1, *steps) + 1 if steps else 2


def _translate(links: Any, new_ids: Mapping[Any, int]) -> Any:
    if links is None:
        return None
    if isinstance(links, list):
        return [_translate(link, new_ids) for link in links]
    if isinstance(links, tuple):
        return tuple(_translate(link, new_ids) for link in links)
    if isinstance(links, dict):
        return {channel: _translate(sub, new_ids) for channel, sub in links.items()}
    return new_ids[links]


def renumber(
    steps: Mapping[int, dict[str, Any]],
    start: list[tuple[Any, ...]],
    error: list[Any] | None,
    first_id: int,
) -> tuple[dict[int, dict[str, Any]], list[tuple[Any, ...]], list[Any] | None]:
    """Return copies of ``steps``, ``start`` and ``error`` with ids from ``first_id`` on.

    Step links (``output``, ``error``) are rewritten; the parts must come from
    a validated recipe, so every link names one of ``steps``.
    """
    new_ids = {old: first_id + offset for offset, old in enumerate(steps)}
    new_steps: dict[int, dict[str, Any]] = {}
    for old, step in steps.items():
        moved = copy.deepcopy(step)
        for field in _LINK_FIELDS:
            if field in moved:
                moved[field] = _translate(moved[field], new_ids)
        new_steps[new_ids[old]] = moved
    new_start = [(new_ids[target], copy.deepcopy(payload)) for target, payload in start]
    new_error = None if error is None else [new_ids[target] for target in error]
    return new_steps, new_start, new_error
