"""The Recipe: a graph of steps, loaded, checked, filled in and merged.

Loading normalises like python-workflows (integer step ids, a bare ``output``
becomes a one-element list, ``start`` entries become tuples), so ``to_dict()``
gives the same wire form the reference sends. Where the reference crashes or
keeps something no valid recipe can contain, we raise ``InvalidRecipe`` at
load time instead, naming the key: a non-numeric key, a ``start`` that is not
a list, a step that is not an object. A bare integer top-level ``error`` is
accepted as a one-element list.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from zocalo.errors import InvalidRecipe
from zocalo.recipe.merge import first_free_id, renumber
from zocalo.recipe.parameters import substitute
from zocalo.recipe.validation import check_recipe, invalid, recipe_problems, short_repr

__all__ = ["Recipe"]

_SPECIAL = ("start", "error")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _wire(value: Any) -> Any:
    """A JSON-shaped deep copy: tuples become lists."""
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(item) for item in value]
    return value


def _normalise_step(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value.get("output", []), list | dict):
        value["output"] = [value["output"]]
    return value


def _load_start(value: Any, problems: list[InvalidRecipe]) -> list[tuple[Any, ...]] | None:
    if not isinstance(value, list | tuple):
        problems.append(invalid(f"field 'start' must be a list, not {short_repr(value)}"))
        return None
    entries = []
    for index, entry in enumerate(value, 1):
        if isinstance(entry, list | tuple):
            entries.append(tuple(entry))
        else:
            problems.append(
                invalid(
                    f"field 'start' entry {index} is not a [step, payload] pair: "
                    f"{short_repr(entry)}"
                )
            )
    return entries


def _load_error(value: Any, problems: list[InvalidRecipe]) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]  # the reference crashes on this; one error node is clear enough
    if isinstance(value, list | tuple):
        return list(value)
    problems.append(
        invalid(f"field 'error' must be a step id or a list of them, not {short_repr(value)}")
    )
    return None


def _step_id(key: Any) -> int | None:
    """The integer id for a non-int top-level key, or None for a key kept as it is."""
    try:
        number = int(key)
    except (TypeError, ValueError):
        raise invalid(f"top-level key {key!r} is not 'start', 'error' or a step id") from None
    # As in the reference, "0" (or 2.0 from Python) stays a key and fails validate().
    return number if number and key != number else None


class Recipe:
    """A processing recipe: ``start``, optional ``error``, and numbered steps.

    ``Recipe(data)`` takes a dict, a JSON string, another Recipe (copied) or
    None. The input is never modified.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable, like the reference

    def __init__(self, data: Recipe | Mapping[Any, Any] | str | bytes | None = None) -> None:
        self._steps: dict[int, dict[str, Any]] = {}
        self._start: list[tuple[Any, ...]] | None = None
        self._error: list[Any] | None = None
        self._stray: dict[Any, Any] = {}
        if isinstance(data, Recipe):
            self.__dict__.update(copy.deepcopy(data.__dict__))
            return
        if isinstance(data, str | bytes):
            data = self._parse(data)
        if data:
            for problem in self._load(data):
                raise problem

    @classmethod
    def examine(
        cls, data: Mapping[Any, Any] | str | bytes | None
    ) -> tuple[Recipe | None, list[InvalidRecipe]]:
        """The recipe in ``data`` and every problem it has, for people to fix at once.

        What stops it loading (not JSON, not an object, keys or shapes no recipe
        has) is all reported, and then no more (the graph is not known); a recipe
        that loads is checked as a whole, its routes too (``zocalo recipe validate``).
        The recipe is None when it did not load.
        """
        recipe = cls()
        try:
            if isinstance(data, str | bytes):
                data = cls._parse(data)
        except InvalidRecipe as problem:
            return None, [problem]
        if data:
            problems = recipe._load(data)
            if problems:
                return None, problems
        return recipe, list(recipe.problems(routes=True))

    @classmethod
    def from_wire(cls, data: Mapping[Any, Any]) -> Recipe:
        """A recipe from a freshly decoded message, which it takes over (no copy).

        The hot path of every service: the decoded body belongs to nobody
        else, so the defensive deep copy of ``Recipe(data)`` is skipped.
        """
        recipe = cls()
        if data:
            for problem in recipe._load(data, copy_input=False):
                raise problem
        return recipe

    @staticmethod
    def _parse(text: str | bytes) -> Any:
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as error:
            raise invalid(f"not valid JSON ({error})") from None
        except RecursionError:  # the decoder nests one Python frame per level
            raise invalid("not valid JSON (nested too deeply)") from None

    def _load(self, data: Any, copy_input: bool = True) -> list[InvalidRecipe]:
        """Take in ``data``; what no recipe can hold is left out and returned, each
        problem once (the caller raises the first, or reports them all)."""
        if not isinstance(data, Mapping):
            return [invalid(f"expected a JSON object, not {short_repr(data)}")]
        if copy_input:
            try:
                data = copy.deepcopy(dict(data))
            except RecursionError:  # two Python frames per level: JSON can nest deeper
                return [invalid("a value is nested too deeply to be copied")]
        problems: list[InvalidRecipe] = []
        # Ids that were already ints come first, converted ones after, as in the
        # reference: merge() numbers steps in this order.
        converted: list[tuple[int, Any]] = []
        for key, value in data.items():
            if key == "start":
                self._start = _load_start(value, problems)
            elif key == "error":
                self._error = _load_error(value, problems)
            elif isinstance(key, int):
                self._add_step(int(key), value, problems)
            else:
                try:
                    number = _step_id(key)
                except InvalidRecipe as problem:
                    problems.append(problem)
                    continue
                if number is None:
                    self._stray[key] = _normalise_step(value)
                else:
                    converted.append((number, value))
        for number, value in converted:
            self._add_step(number, value, problems)
        return problems

    def _add_step(self, step_id: int, value: Any, problems: list[InvalidRecipe]) -> None:
        if step_id in self._steps:
            problems.append(invalid(f"step {step_id} is defined twice"))
        elif not isinstance(value, dict):
            problems.append(invalid(f"step {step_id} must be an object, not {short_repr(value)}"))
        else:
            self._steps[step_id] = _normalise_step(value)

    @classmethod
    def _from_parts(
        cls,
        steps: dict[int, dict[str, Any]],
        start: list[tuple[Any, ...]] | None,
        error: list[Any] | None,
    ) -> Recipe:
        recipe = cls()
        recipe._steps, recipe._start, recipe._error = steps, start, error
        return recipe

    # -- reading ----------------------------------------------------------
    @property
    def steps(self) -> dict[int, dict[str, Any]]:
        """The steps by integer id (the live dict)."""
        return self._steps

    @property
    def start(self) -> list[tuple[Any, ...]] | None:
        """``(step_id, payload)`` pairs, or None when the recipe has no ``start``."""
        return self._start

    @property
    def error(self) -> list[Any] | None:
        """Recipe-wide error step ids, or None when absent."""
        return self._error

    @property
    def is_empty(self) -> bool:
        """True for a recipe with no keys at all (``Recipe()``, ``Recipe({})``)."""
        return not (self._steps or self._stray) and self._start is None and self._error is None

    def _lookup(self, key: Any) -> Any:
        if key == "start" and self._start is not None:
            return self._start
        if key == "error" and self._error is not None:
            return self._error
        if key in self._stray:
            return self._stray[key]
        if key not in _SPECIAL:
            try:
                return self._steps[int(key)]
            except (TypeError, ValueError, KeyError):
                pass
        raise KeyError(key)

    def __getitem__(self, key: int | str) -> Any:
        return self._lookup(key)

    def get(self, key: int | str, default: Any = None) -> Any:
        try:
            return self._lookup(key)
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            self._lookup(key)
        except KeyError:
            return False
        return True

    # -- wire form --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-shaped recipe: string step ids, lists for ``start`` entries."""
        wire: dict[Any, Any] = {}
        if self._start is not None:
            wire["start"] = _wire(self._start)
        if self._error is not None:
            wire["error"] = _wire(self._error)
        for step_id, step in self._steps.items():
            wire[str(step_id)] = _wire(step)
        for key, value in self._stray.items():
            wire[key] = _wire(value)
        return wire

    def serialize(self) -> str:
        """The recipe as JSON text, encoded like the reference transports do.

        ``json.dumps`` already writes int keys as strings and tuples as lists,
        so the wire form is serialised directly, without ``to_dict``'s copy.
        """
        view: dict[Any, Any] = {}
        if self._start is not None:
            view["start"] = self._start
        if self._error is not None:
            view["error"] = self._error
        view.update(self._steps)
        view.update(self._stray)
        return json.dumps(view, default=_json_default)

    def pretty(self) -> str:
        """Indented JSON, for people."""
        return json.dumps(self.to_dict(), default=_json_default, indent=2)

    def copy(self) -> Recipe:
        """An independent deep copy."""
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping | str | bytes):
            try:
                other = Recipe(other)
            except InvalidRecipe:
                return False
        if not isinstance(other, Recipe):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Recipe({self.to_dict()!r})"

    # -- checking, filling in, combining -----------------------------------
    def validate(self) -> None:
        """Raise InvalidRecipe (naming step and field) unless the recipe is runnable."""
        check_recipe(self._steps, self._start, self._error, self._stray)

    def problems(self, *, routes: bool = False) -> Iterator[InvalidRecipe]:
        """Every reason the recipe is not runnable (see ``validation.recipe_problems``);
        with ``routes``, also each queue, topic or delay no message could be sent with."""
        return recipe_problems(self._steps, self._start, self._error, self._stray, routes=routes)

    def apply_parameters(self, parameters: Mapping[str, Any] | None) -> None:
        """Fill ``parameters`` into every string and dict key, in place."""
        steps = {
            step_id: substitute(step, parameters, where=f"step {step_id}")
            for step_id, step in self._steps.items()
        }
        start = None if self._start is None else substitute(self._start, parameters, where="start")
        error = None if self._error is None else substitute(self._error, parameters, where="error")
        stray = substitute(self._stray, parameters)
        self._steps, self._start, self._error, self._stray = steps, start, error, stray

    def merge(self, other: Recipe | Mapping[Any, Any] | str | None) -> Recipe:
        """A new recipe running this one and ``other`` side by side.

        ``other``'s steps are renumbered after ours (see ``merge.renumber``).
        Neither recipe is modified. If either is empty the other is copied
        without renumbering or validation; otherwise both must validate.
        """
        other = other if isinstance(other, Recipe) else Recipe(other)
        if other.is_empty:
            return self.copy()
        if self.is_empty:
            return other.copy()
        self.validate()
        other.validate()
        assert self._start is not None and other._start is not None  # validated
        moved, moved_start, moved_error = renumber(
            other._steps, other._start, other._error, first_free_id(self._steps)
        )
        mine = self.copy()
        steps = {**mine._steps, **moved}
        start = [*(mine._start or []), *moved_start]
        error = mine._error
        if moved_error is not None:
            error = [*(error or []), *moved_error]
        return Recipe._from_parts(steps, start, error)
