"""Recipe validation: the accept/reject decisions of python-workflows, clearer messages.

A recipe is valid when ``start`` is a non-empty list of ``[step, payload]``
pairs, every link (``output``/``error`` of a step, top-level ``error``) names
an existing step, no cycle is reachable from ``start`` or ``error``, and every
step is reachable. Every message starts ``Invalid recipe:`` and names the step
and field at fault.

Unlike the reference, ``true`` and ``false`` are not step ids (Python counts
them as the integers 1 and 0, so ``"output": [true]`` would quietly mean
step 1).

:func:`check_routes` is the cheap check made on every received message: only
the step the message is at and the steps it can send to, not the whole graph.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from zocalo.errors import InvalidRecipe

__all__ = [
    "check_destinations",
    "check_every_route",
    "check_recipe",
    "check_routes",
    "is_step_id",
    "link_targets",
    "short_repr",
]

_LINK_FIELDS = ("output", "error")
#: Fields naming where a step's messages go: each a name (string), or absent.
_DESTINATION_FIELDS = ("queue", "topic")

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = 8
_SHORT.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr`` cut to a readable length: values in errors may come from hostile input."""
    return _SHORT.repr(value)


def is_step_id(value: Any) -> bool:
    """True for a value that can be a step id: an int, but not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(text: str) -> InvalidRecipe:
    return InvalidRecipe(f"Invalid recipe: {text}")


def _not_a_link(link: Any) -> str:
    return " (true and false are not step ids)" if isinstance(link, bool) else ""


def link_targets(links: Any, where: str) -> list[int]:
    """Flatten a link value (None, int, list of ints, dict of those) into step ids.

    Like the reference, dict values may themselves be dicts; unlike it, bools
    are refused. ``where`` names the step and field for the error message.
    """
    if links is None:
        return []
    if is_step_id(links):
        return [links]
    if isinstance(links, list):
        bad = [link for link in links if not is_step_id(link)]
        if bad:
            raise _fail(
                f"{where} has an invalid link {short_repr(bad[0])} in "
                f"{short_repr(links)}{_not_a_link(bad[0])}"
            )
        return list(links)
    if isinstance(links, dict):
        targets: list[int] = []
        for channel, sub_links in links.items():
            targets += link_targets(sub_links, f"{where} channel {short_repr(channel)}")
        return targets
    raise _fail(
        f"{where} has an invalid link {short_repr(links)} (want int, list of ints or dict)"
        f"{_not_a_link(links)}"
    )


def _check_start(start: list[Any] | None) -> None:
    if start is None:
        raise _fail("field 'start' is missing")
    if not start:
        raise _fail("field 'start' is empty")
    for index, entry in enumerate(start, 1):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise _fail(
                f"field 'start' entry {index} is not a [step, payload] pair: {short_repr(entry)}"
            )
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
        if isinstance(target, bool):
            raise _fail(f"{where} links to {target!r}, which is not a step id{_not_a_link(target)}")
        if not isinstance(target, Hashable) or target not in self.steps:
            raise _fail(f"{where} links to step {short_repr(target)}, which does not exist")
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


def _check_destination(step_id: int, step: Mapping[str, Any]) -> None:
    """Refuse a step whose queue, topic or transport-delay no message could be sent with."""
    for field in _DESTINATION_FIELDS:
        name = step.get(field)
        if name is not None and not isinstance(name, str):
            raise _fail(
                f"step {step_id} field {field!r} must be a name (a string), not {short_repr(name)}"
            )
    delay = step.get("transport-delay")
    if not delay:
        return  # absent, null or 0: no delay, as python-workflows reads it
    try:
        seconds = float(delay) if not isinstance(delay, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise _fail(
            f"step {step_id} field 'transport-delay' must be a number of seconds >= 0, "
            f"not {short_repr(delay)}"
        )


def check_routes(steps: Mapping[int, Mapping[str, Any]], pointer: int) -> list[int]:
    """The steps a message at step ``pointer`` can be sent on to; InvalidRecipe if unusable.

    Checks what a service needs to route this one message, and nothing more (a
    received message's recipe is not walked as a whole: that would cost every
    hop a graph walk): the links of step ``pointer`` name existing steps, and
    this step (a checkpoint returns here) and every step it links to has a
    usable queue, topic and transport-delay. ``pointer`` must be a step.
    """
    step = steps[pointer]
    targets: list[int] = []
    for field in _LINK_FIELDS:
        if field not in step:
            continue
        where = f"step {pointer} field {field!r}"
        for target in link_targets(step[field], where):
            if target not in steps:
                raise _fail(f"{where} links to step {target}, which does not exist")
            targets.append(target)
    for step_id in dict.fromkeys([pointer, *targets]):
        _check_destination(step_id, steps[step_id])
    return targets


def check_every_route(steps: Mapping[int, Mapping[str, Any]]) -> None:
    """Raise InvalidRecipe unless every step could route a message (:func:`check_routes`).

    What a recipe about to be started (by the Dispatcher) or checked by ``zocalo recipe
    validate`` must pass beyond :func:`check_recipe`: a queue that is no name would
    otherwise be found only when a message is sent there. ``steps`` must have passed
    :func:`check_recipe`.
    """
    for step_id in steps:
        check_routes(steps, step_id)
