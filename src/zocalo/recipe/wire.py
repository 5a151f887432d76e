"""Recipe messages on the wire, decoded-equal to what python-workflows sends.

Body: a JSON object with the keys ``recipe``, ``recipe-pointer``,
``recipe-path``, ``environment`` and ``payload`` (in that order); header
``workflows-recipe: true``. Plain ``json.dumps`` output, never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from zocalo.errors import InvalidMessage, InvalidRecipe
from zocalo.recipe.model import Recipe

RECIPE_HEADER = "workflows-recipe"
#: Header values receivers accept as "this is a recipe message" (STOMP sends strings).
_TRUE_FLAGS = (True, "True", "true", 1)


def _json_default(value: Any) -> Any:
    """Serialise the one non-JSON type the reference accepts: Decimal -> float."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def dumps(value: Any) -> str:
    """``json.dumps`` with the reference's settings."""
    return json.dumps(value, default=_json_default)


def is_recipe_message(headers: Mapping[str, Any]) -> bool:
    """True when the headers carry the reference's recipe flag in any accepted spelling."""
    flag = headers.get(RECIPE_HEADER)
    return any(flag == accepted and type(flag) is type(accepted) for accepted in _TRUE_FLAGS)


def recipe_headers(headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Caller headers plus the recipe flag."""
    result = dict(headers or {})
    result[RECIPE_HEADER] = True
    return result


class RecipeEncoder:
    """Builds bodies for many hops of one recipe, serialising the recipe once."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe_json = recipe.serialize()

    def body(
        self, pointer: int, path: list[int], environment: Mapping[str, Any], payload: Any
    ) -> bytes:
        # Same text json.dumps would produce for the five-key dict, without
        # re-serialising the (often large) recipe for every output.
        text = (
            f'{{"recipe": {self.recipe_json}, "recipe-pointer": {int(pointer)}, '
            f'"recipe-path": {dumps([int(step) for step in path])}, '
            f'"environment": {dumps(environment)}, "payload": {dumps(payload)}}}'
        )
        return text.encode("utf-8")


@dataclass
class RecipeMessage:
    """A decoded recipe message: where it is in which recipe, and its payload."""

    recipe: Recipe
    pointer: int
    path: list[int]
    environment: dict[str, Any]
    payload: Any

    @property
    def recipe_id(self) -> str | None:
        value = self.environment.get("ID")
        return None if value is None else str(value)

    @property
    def step(self) -> dict[str, Any]:
        return self.recipe[self.pointer]


@dataclass
class PlainMessage:
    """A message without the recipe flag (e.g. a Dispatcher request)."""

    payload: Any
    headers: dict[str, Any] = field(default_factory=dict)


def encode(
    recipe: Recipe, pointer: int, path: list[int], environment: Mapping[str, Any], payload: Any
) -> bytes:
    """One recipe message body."""
    return RecipeEncoder(recipe).body(pointer, path, environment, payload)


def decode_json(body: bytes | str, what: str) -> Any:
    """Parse a JSON body or raise InvalidMessage naming ``what`` and the parse error."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidMessage(f"{what}: body is not valid JSON ({error})") from None


def decode(body: bytes | str, headers: Mapping[str, Any], what: str) -> RecipeMessage:
    """Decode and check a recipe message; ``what`` names it in errors."""
    data = decode_json(body, what)
    if not isinstance(data, dict):
        raise InvalidMessage(
            f"{what}: recipe message body is a {type(data).__name__}, not an object"
        )
    missing = [key for key in ("recipe", "recipe-pointer") if key not in data]
    if missing:
        raise InvalidMessage(f"{what}: not a recipe message, missing {', '.join(missing)}")
    try:
        recipe = Recipe.from_wire(data["recipe"])
    except (InvalidRecipe, TypeError, ValueError) as error:
        raise InvalidMessage(f"{what}: invalid recipe ({error})") from None
    try:
        pointer = int(data["recipe-pointer"])
        path = [int(step) for step in data.get("recipe-path") or []]
    except (TypeError, ValueError) as error:
        raise InvalidMessage(f"{what}: bad recipe-pointer or recipe-path ({error})") from None
    if pointer not in recipe.steps:
        raise InvalidMessage(
            f"{what}: recipe-pointer {pointer} names no step of the recipe "
            f"(steps: {sorted(recipe.steps)})"
        )
    environment = data.get("environment") or {}
    if not isinstance(environment, dict):
        raise InvalidMessage(
            f"{what}: environment is a {type(environment).__name__}, not an object"
        )
    return RecipeMessage(recipe, pointer, path, environment, data.get("payload"))
