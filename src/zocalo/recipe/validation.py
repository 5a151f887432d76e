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
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

from zocalo.errors import InvalidRecipe
from zocalo.transport.base import MAX_DURATION

__all__ = [
    "check_destinations",
    "check_every_route",
    "check_recipe",
    "check_routes",
    "invalid",
    "is_step_id",
    "link_targets",
    "recipe_problems",
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


def invalid(text: str) -> InvalidRecipe:
    """The error for one problem of a recipe: every message starts alike."""
    return InvalidRecipe(f"Invalid recipe: {text}")


def _first(problems: Iterable[InvalidRecipe]) -> None:
    """Raise the first of ``problems``, if any (the rest are never looked for)."""
    for problem in problems:
        raise problem


def _not_a_link(link: Any) -> str:
    return " (true and false are not step ids)" if isinstance(link, bool) else ""


def _links(links: Any, where: str, problems: list[InvalidRecipe]) -> list[int]:
    """The step ids of a link value; each unreadable link joins ``problems`` and is left out."""
    if links is None:
        return []
    if is_step_id(links):
        return [links]
    if isinstance(links, list):
        targets: list[int] = []
        for link in links:
            if is_step_id(link):
                targets.append(link)
            else:
                problems.append(
                    invalid(
                        f"{where} has an invalid link {short_repr(link)} in "
                        f"{short_repr(links)}{_not_a_link(link)}"
                    )
                )
        return targets
    if isinstance(links, dict):
        targets = []
        for channel, sub_links in links.items():
            targets += _links(sub_links, f"{where} channel {short_repr(channel)}", problems)
        return targets
    problems.append(
        invalid(
            f"{where} has an invalid link {short_repr(links)} (want int, list of ints or dict)"
            f"{_not_a_link(links)}"
        )
    )
    return []


def link_targets(links: Any, where: str) -> list[int]:
    """Flatten a link value (None, int, list of ints, dict of those) into step ids.

    Like the reference, dict values may themselves be dicts; unlike it, bools
    are refused. ``where`` names the step and field for the error message.
    """
    problems: list[InvalidRecipe] = []
    targets = _links(links, where, problems)
    _first(problems)
    return targets


def _start_problems(start: list[Any] | None) -> Iterator[InvalidRecipe]:
    if start is None:
        yield invalid("field 'start' is missing")
        return
    if not start:
        yield invalid("field 'start' is empty")
    for index, entry in enumerate(start, 1):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            yield invalid(
                f"field 'start' entry {index} is not a [step, payload] pair: {short_repr(entry)}"
            )
        elif entry[0] == "start":
            yield invalid(f"field 'start' entry {index} points to 'start' itself")


def _error_problems(error: list[Any] | None) -> Iterator[InvalidRecipe]:
    for special in ("start", "error"):
        if error is not None and special in error:
            yield invalid(f"field 'error' points to {special!r}, not to a step")


class _Walk:
    """Depth-first walk from the roots, finding dangling links and cycles.

    Each step is walked once, so each link is looked at once: every problem is
    found once. ``unreadable`` tells whether a link value could not be read (the
    steps behind it may look unreached when they are not).
    """

    def __init__(self, steps: Mapping[Any, Mapping[str, Any]]) -> None:
        self.steps = steps
        self.done: set[Any] = set()
        self.problems: list[InvalidRecipe] = []
        self.unreadable = False
        #: The steps on the path being walked (the path's ``start``/``error`` root aside).
        self._on_path: set[Any] = set()

    def visit(self, target: Any, path: list[Any], where: str) -> None:
        """Walk from ``target`` (linked to from ``where``, at the end of ``path``).

        With a stack of its own, not recursion: a long chain of steps (a hostile or
        generated recipe) must give problems, not a RecursionError.
        """
        if not self._enters(target, path, where):
            return
        path.append(target)
        self._on_path.add(target)
        walking = [self._links_of(target)]
        while walking:
            following = next(walking[-1], None)
            if following is None:  # every link of this step walked
                walking.pop()
                walked = path.pop()
                self._on_path.discard(walked)
                self.done.add(walked)
                continue
            link, label = following
            if self._enters(link, path, label):
                path.append(link)
                self._on_path.add(link)
                walking.append(self._links_of(link))

    def _enters(self, target: Any, path: list[Any], where: str) -> bool:
        """Whether the walk goes into ``target``; if it is a problem, it is recorded."""
        if isinstance(target, bool):
            self.problems.append(
                invalid(f"{where} links to {target!r}, which is not a step id{_not_a_link(target)}")
            )
            return False
        if not isinstance(target, Hashable) or target not in self.steps:
            self.problems.append(
                invalid(f"{where} links to step {short_repr(target)}, which does not exist")
            )
            return False
        if target in self._on_path:  # (a set: a long path is not searched at each link)
            trail = " -> ".join(str(node) for node in [*path, target])
            self.problems.append(
                invalid(f"{where} links back to step {target!r}, making a cycle ({trail})")
            )
            return False
        return target not in self.done  # (already walked: its problems are known)

    def _links_of(self, target: Any) -> Iterator[tuple[int, str]]:
        """Each link of step ``target`` with the label naming it, field by field (a
        field's unreadable links are recorded when the walk reaches that field)."""
        step = self.steps[target]
        for field in _LINK_FIELDS:
            if field in step:
                label = f"step {target} field {field!r}"
                found = len(self.problems)
                links = _links(step[field], label, self.problems)
                self.unreadable |= len(self.problems) > found
                for link in links:
                    yield link, label


def recipe_problems(
    steps: Mapping[Any, Mapping[str, Any]],
    start: list[Any] | None,
    error: list[Any] | None,
    stray_keys: Iterable[Any] = (),
    *,
    routes: bool = False,
) -> Iterator[InvalidRecipe]:
    """Every reason these parts make no valid recipe, each an InvalidRecipe naming the
    step and field: the one home of the recipe rules.

    ``stray_keys`` are top-level keys that are neither ``start``, ``error`` nor
    a non-zero integer (``"0"`` is the only way to get one from JSON). With
    ``routes``, also every step's queue, topic and transport-delay (see
    :func:`check_every_route`). A step behind an unreadable ``start`` or link
    is not called unreached: that would only repeat the problem.
    """
    stray = list(stray_keys)
    if not steps and start is None and error is None and not stray:
        yield invalid("the recipe is empty")
        return
    start_problems = list(_start_problems(start))
    yield from start_problems
    yield from _error_problems(error)
    for key in stray:
        yield invalid(f"top-level key {key!r} is not a step id (non-zero integer)")

    walk = _Walk(steps)
    for index, entry in enumerate(start or (), 1):
        if isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] != "start":
            walk.visit(entry[0], ["start"], f"field 'start' entry {index}")
    for target in error or ():
        if target not in ("start", "error"):
            walk.visit(target, ["error"], "field 'error'")
    yield from walk.problems

    if not start_problems and not walk.unreadable:
        for step_id in steps:
            if step_id not in walk.done:
                yield invalid(
                    f"step {step_id} is never reached from 'start' or 'error' (unreferenced node)"
                )
    if routes:
        for step_id, step in steps.items():
            yield from _destination_problems(step_id, step)


def check_recipe(
    steps: Mapping[Any, Mapping[str, Any]],
    start: list[Any] | None,
    error: list[Any] | None,
    stray_keys: Iterable[Any] = (),
) -> None:
    """Raise the first of :func:`recipe_problems` (InvalidRecipe), if any."""
    _first(recipe_problems(steps, start, error, stray_keys))


def check_destinations(steps: Mapping[Any, Mapping[str, Any]]) -> None:
    """Raise InvalidRecipe if a step names neither a ``queue`` nor a ``topic``.

    Not part of :func:`check_recipe`: python-workflows accepts such a step (a message
    to it goes nowhere), so a recipe received from its services may hold one. A
    recipe about to be started is refused instead, before anything says it started.
    """
    for step_id, step in steps.items():
        names = [step.get(key) for key in ("queue", "topic")] if isinstance(step, Mapping) else []
        if not any(isinstance(name, str) and name for name in names):
            raise invalid(f"step {step_id} has neither 'queue' nor 'topic': nothing would be sent")


def _destination_problems(step_id: int, step: Mapping[str, Any]) -> Iterator[InvalidRecipe]:
    """A queue, topic or transport-delay no message could be sent with."""
    for field in _DESTINATION_FIELDS:
        name = step.get(field)
        if name is not None and not isinstance(name, str):
            yield invalid(
                f"step {step_id} field {field!r} must be a name (a string), not {short_repr(name)}"
            )
    delay = step.get("transport-delay")
    if not delay:
        return  # absent, null or 0: no delay, as python-workflows reads it
    try:
        seconds = float(delay) if not isinstance(delay, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION):
        # (the longest delay every transport takes: a longer one fails each send to the step)
        yield invalid(
            f"step {step_id} field 'transport-delay' must be a number of seconds from 0 to "
            f"{MAX_DURATION:.0f} (49.7 days), not {short_repr(delay)}"
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
                raise invalid(f"{where} links to step {target}, which does not exist")
            targets.append(target)
    for step_id in dict.fromkeys([pointer, *targets]):
        _first(_destination_problems(step_id, steps[step_id]))
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
