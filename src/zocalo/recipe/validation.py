"""Recipe validation: the accept/reject decisions of python-workflows, clearer messages.

A recipe is valid when ``start`` is a non-empty list of ``[step, payload]``
pairs, every link (``output``/``error`` of a step, top-level ``error``) names
an existing step, no cycle is reachable from ``start`` or ``error``, and every
step is reachable. Every message starts ``Invalid recipe:`` and names the step
and field at fault.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from zocalo.errors import InvalidRecipe

__all__ = ["check_destinations", "check_recipe", "link_targets"]

_LINK_FIELDS = ("output", "error")


def _fail(text: str) -> InvalidRecipe:
    return InvalidRecipe(f"Invalid recipe: {text}")


def link_targets(links: Any, where: str) -> list[Any]:
    """Flatten a link value (None, int, list of ints, dict of those) into step ids.

    Like the reference, dict values may themselves be dicts, and bools pass
    as ints. ``where`` names the step and field for the error message.
    """
    if links is None:
        return []
    if isinstance(links, int):
        return [links]
    if isinstance(links, list):
        bad = [link for link in links if not isinstance(link, int)]
        if bad:
            raise _fail(f"{where} has an invalid link {bad[0]!r} in {links!r}")
        return list(links)
    if isinstance(links, dict):
        targets: list[Any] = []
        for channel, sub_links in links.items():
            targets += link_targets(sub_links, f"{where} channel {channel!r}")
        return targets
    raise _fail(f"{where} has an invalid link {links!r} (want int, list of ints or dict)")


def _check_start(start: list[Any] | None) -> None:
    if start is None:
        raise _fail("field 'start' is missing")
    if not start:
        raise _fail("field 'start' is empty")
    for index, entry in enumerate(start, 1):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise _fail(f"field 'start' entry {index} is not a [step, payload] pair: {entry!r}")
    for index, entry in enumerate(start, 1):
        if entry[0] == "start":
            raise _fail(f"field 'start' entry {index} points to 'start' itself")


def _check_error(error: list[Any] | None) -> None:
    for special in ("start", "error"):
        if error is not None and special in error:
            raise _fail(f"field 'error' points to {special!r}, not to a step")


class _Walk:
    """Depth-first walk from the roots, finding dangling links and cycles."""

    def __init__(self, steps: Mapping[Any, Mapping[str, Any]]) -> None:
        self.steps = steps
        self.done: set[Any] = set()

    def visit(self, target: Any, path: list[Any], where: str) -> None:
        if not isinstance(target, Hashable) or target not in self.steps:
            raise _fail(f"{where} links to step {target!r}, which does not exist")
        if target in path:
            trail = " -> ".join(str(node) for node in [*path, target])
            raise _fail(f"{where} links back to step {target!r}, making a cycle ({trail})")
        if target in self.done:
            return  # already walked without finding a problem below it
        path.append(target)
        step = self.steps[target]
        for field in _LINK_FIELDS:
            if field in step:
                label = f"step {target} field {field!r}"
                for link in link_targets(step[field], label):
                    self.visit(link, path, label)
        path.pop()
        self.done.add(target)


def check_recipe(
    steps: Mapping[Any, Mapping[str, Any]],
    start: list[Any] | None,
    error: list[Any] | None,
    stray_keys: Iterable[Any] = (),
) -> None:
    """Raise InvalidRecipe unless these parts make a valid recipe.

    ``stray_keys`` are top-level keys that are neither ``start``, ``error`` nor
    a non-zero integer (``"0"`` is the only way to get one from JSON).
    """
    stray = list(stray_keys)
    if not steps and start is None and error is None and not stray:
        raise _fail("the recipe is empty")
    _check_start(start)
    _check_error(error)
    if stray:
        raise _fail(f"top-level key {stray[0]!r} is not a step id (non-zero integer)")

    walk = _Walk(steps)
    assert start is not None  # checked above
    for index, (target, _payload) in enumerate(start, 1):
        walk.visit(target, ["start"], f"field 'start' entry {index}")
    for target in error or ():
        walk.visit(target, ["error"], "field 'error'")

    unreached = [step_id for step_id in steps if step_id not in walk.done]
    if unreached:
        raise _fail(
            f"step {unreached[0]} is never reached from 'start' or 'error' (unreferenced node)"
        )


def check_destinations(steps: Mapping[Any, Mapping[str, Any]]) -> None:
    """Raise InvalidRecipe if a step names neither a ``queue`` nor a ``topic``.

    Not part of :func:`check_recipe`: python-workflows accepts such a step (a message
    to it goes nowhere), so a recipe received from its services may hold one. A
    recipe about to be started is refused instead, before anything says it started.
    """
    for step_id, step in steps.items():
        names = [step.get(key) for key in ("queue", "topic")] if isinstance(step, Mapping) else []
        if not any(isinstance(name, str) and name for name in names):
            raise _fail(f"step {step_id} has neither 'queue' nor 'topic': nothing would be sent")
