"""Parameter substitution into recipe values, with python-workflows' results.

Strings go through ``str.format`` rules against the parameters, except that a
name the parameters lack survives as its literal placeholder, so one recipe can
be filled in stages. A whole string ``{$REPLACE:name}`` becomes a deep copy of
the parameter itself (list, dict, number...), not its text.

Where python-workflows fails with whatever Python raised (KeyError, IndexError,
TypeError, AttributeError), we raise ``InvalidRecipe`` naming the string. We
also refuse attribute access (``{x.y}``) on known names: the reference renders
Python internals there (``<built-in method ...>``), which no recipe wants.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # the field-name parser string.Formatter uses
import copy
import string
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from zocalo.errors import InvalidRecipe, ZocaloError

__all__ = ["substitute"]

# python-workflows tests only the prefix "{$REPLACE" and then drops 10 characters,
# so "{$REPLACEMENT}" looks up "ENT". Kept as is: it is visible in results.
_REPLACE_PREFIX = "{$REPLACE"
_REPLACE_CUT = len("{$REPLACE:")


class _Refused(ZocaloError):
    """A field we will not evaluate; turned into InvalidRecipe by the caller."""


class _Placeholder:
    """An unknown name: formats back to its own ``{...}`` text."""

    __slots__ = ("field",)

    def __init__(self, field: str) -> None:
        self.field = field

    def __str__(self) -> str:
        return "{" + self.field + "}"

    __repr__ = __str__

    def __getitem__(self, key: object) -> _Placeholder:
        if not isinstance(key, str):
            # A digit index on an unknown name fails in the reference too.
            raise _Refused(f"cannot index unknown name {self} with [{key}]")
        return _Placeholder(f"{self.field}[{key}]")

    def __format__(self, spec: str) -> str:
        if spec:
            raise _Refused(f"unknown name {self} has a format spec {spec!r}")
        return str(self)


class _Lookup(string.Formatter):
    """``str.format`` over a parameters mapping, with our refusals built in."""

    def __init__(self, parameters: Mapping[Any, Any], *, keep_unknown: bool) -> None:
        self.parameters = parameters
        self.keep_unknown = keep_unknown

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int):
            raise _Refused("positional fields such as {} or {0} have no value")
        if key in self.parameters:
            return self.parameters[key]
        if self.keep_unknown:
            return _Placeholder(key)
        raise KeyError(key)

    def get_field(
        self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Any, Any]:
        first, rest = _string.formatter_field_name_split(field_name)
        value = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            if is_attribute:
                raise _Refused(f"attribute access '.{key}' is not allowed")
            value = value[key]
        return value, first


class _Capture(_Lookup):
    """Evaluates ``{$REPLACE:...}``: keeps the last field's value, not its text."""

    def __init__(self, parameters: Mapping[Any, Any]) -> None:
        super().__init__(parameters, keep_unknown=False)
        self.captured: list[Any] = []

    def format_field(self, value: Any, format_spec: str) -> str:
        # The reference ignores any format spec here; so do we.
        self.captured.append(value)
        return ""


def _replace_whole(text: str, parameters: Mapping[Any, Any]) -> Any:
    capture = _Capture(parameters)
    try:
        capture.vformat("{" + text[_REPLACE_CUT:-1] + "}", (), {})
    except KeyError:
        return None  # a missing name (or key) gives null, as in the reference
    if not capture.captured:
        raise _Refused("it names no parameter")
    return copy.deepcopy(capture.captured[-1])


def _substitute_text(text: str, parameters: Mapping[Any, Any], where: str) -> Any:
    try:
        if text.startswith(_REPLACE_PREFIX) and text.endswith("}"):
            return _replace_whole(text, parameters)
        return _Lookup(parameters, keep_unknown=True).vformat(text, (), {})
    except (_Refused, ValueError, LookupError, TypeError, AttributeError) as error:
        reason = str(error) if isinstance(error, _Refused | ValueError) else repr(error)
        place = f" in {where}" if where else ""
        raise InvalidRecipe(
            f"Invalid recipe: cannot substitute parameters into {text!r}{place}: {reason}"
        ) from error


def substitute(value: Any, parameters: Mapping[Any, Any] | None, *, where: str = "") -> Any:
    """Return ``value`` with ``parameters`` filled into every string and dict key.

    Lists, tuples and dicts are rebuilt (inputs are never modified); other
    values are returned as they are. ``where`` only labels error messages.
    """
    params = parameters or {}
    if isinstance(value, str):
        return _substitute_text(value, params, where)
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            new_key = substitute(key, params, where=where)
            if not isinstance(new_key, Hashable):  # a $REPLACE key became a list or dict
                place = f" in {where}" if where else ""
                raise InvalidRecipe(
                    f"Invalid recipe: dict key {key!r} became {new_key!r}, "
                    f"which cannot be a key{place}"
                )
            result[new_key] = substitute(item, params, where=where)
        return result
    if isinstance(value, list):
        return [substitute(item, params, where=where) for item in value]
    if isinstance(value, tuple):
        return tuple(substitute(item, params, where=where) for item in value)
    return value
