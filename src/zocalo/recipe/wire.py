"""Recipe messages on the wire, decoded-equal to what python-workflows sends.

Body: a JSON object with the keys ``recipe``, ``recipe-pointer``,
``recipe-path``, ``environment`` and ``payload`` (in that order); header
``workflows-recipe: true``. Plain ``json.dumps`` output, never pickle.

A job's replies to its caller (ours alone: python-workflows has none) are plain
messages to the queue the environment's :data:`REPLY_TO` names, each a :class:`Reply`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from zocalo.errors import InvalidMessage, InvalidRecipe
from zocalo.recipe.model import Recipe
from zocalo.recipe.validation import check_routes, is_step_id, short_repr

RECIPE_HEADER = "workflows-recipe"
#: The recipe environment key naming the queue a job's replies go to (``step.reply``);
#: a Dispatcher request carries it as a parameter of the same name (``zocalo.go --wait``).
REPLY_TO = "zocalo_reply_to"
#: The header naming a reply's identity: the same each time a step's input is redelivered
#: and handled again, different for each distinct reply (see ``RecipeStep.reply``), so
#: the caller counts a repeated reply once.
REPLY_ID_HEADER = "zocalo-reply-id"
#: Header values receivers accept as "this is a recipe message" (STOMP sends strings).
_TRUE_FLAGS = (True, "True", "true", 1)
#: Deepest nesting of lists and objects a received body may have. Far beyond any
#: real recipe or payload, far below where Python's parser and encoder give up.
MAX_NESTING = 100


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


@dataclass(frozen=True)
class Reply:
    """One reply of a job to its caller: what a step gave ``step.reply``, and which
    step of which recipe it came from. On the wire, a JSON object of those three."""

    payload: Any
    recipe_id: str | None = None
    step: int | None = None

    def encode(self) -> bytes:
        return dumps(
            {"recipe_id": self.recipe_id, "step": self.step, "payload": self.payload}
        ).encode("utf-8")

    @classmethod
    def decode(cls, body: bytes | str, what: str) -> Reply:
        """The reply in ``body``, or InvalidMessage naming ``what`` and what is wrong."""
        data = decode_json(body, what)
        if not isinstance(data, dict) or "payload" not in data:
            raise InvalidMessage(f"{what}: not a reply (a JSON object with a 'payload')")
        recipe_id, step = data.get("recipe_id"), data.get("step")
        if not (recipe_id is None or isinstance(recipe_id, str)) or not (
            step is None or is_step_id(step)
        ):
            raise InvalidMessage(
                f"{what}: not a reply (recipe_id {short_repr(recipe_id)}, step {short_repr(step)})"
            )
        return cls(data["payload"], recipe_id, step)


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
    """Parse a JSON body or raise InvalidMessage naming ``what`` and the parse error.

    Bodies nested deeper than :data:`MAX_NESTING` are refused too: Python
    parses at most about 1000 levels, and code that walks or re-encodes a
    value needs stack to spare for its own calls.
    """
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidMessage(f"{what}: body is not valid JSON ({error})") from None
    except RecursionError:
        raise InvalidMessage(
            f"{what}: body is nested too deeply to parse (limit {MAX_NESTING} levels)"
        ) from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise InvalidMessage(f"{what}: body is not usable JSON ({error})") from None
    if _brackets(body) > MAX_NESTING and (depth := nesting(value)) > MAX_NESTING:
        raise InvalidMessage(
            f"{what}: body is nested {depth} levels deep, more than the limit of {MAX_NESTING}"
        )
    return value


def _brackets(body: bytes | str) -> int:
    """An upper bound on the body's nesting, counted in C: most bodies stop here."""
    if isinstance(body, str):
        return body.count("[") + body.count("{")
    return body.count(b"[") + body.count(b"{")


def nesting(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a scalar); no recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        pending.extend((child, depth) for child in item)
    return deepest


def _json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), "a number")


def _step_number(value: Any, field: str, what: str) -> int:
    """A step id sent as a number (or its decimal text, as the reference's ``int()`` takes)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value)
    if not is_step_id(value):
        raise InvalidMessage(
            f"{what}: bad {field}: a step id is an integer, not {short_repr(value)}"
        )
    return value


def decode(
    body: bytes | str, headers: Mapping[str, Any], what: str, *, max_hops: int | None = None
) -> RecipeMessage:
    """Decode and check a recipe message; ``what`` names it in errors.

    Every way a message can fail to make sense raises InvalidMessage (retrying
    cannot help): not JSON, nested too deeply, not a recipe message, an
    invalid recipe, a pointer or path that is not step ids, a step whose
    links or destinations cannot be used, a step that links back onto the
    message's own path, or a path longer than ``max_hops`` (both runaway loops).
    """
    try:
        return _decode(body, what, max_hops)
    except InvalidMessage:
        raise
    except Exception as error:  # the input's fault too: it is all the decoder looks at
        raise InvalidMessage(
            f"{what}: cannot be decoded ({type(error).__name__}: {short_repr(str(error))})"
        ) from None


def _decode(body: bytes | str, what: str, max_hops: int | None) -> RecipeMessage:
    data = decode_json(body, what)
    if not isinstance(data, dict):
        raise InvalidMessage(f"{what}: recipe message body is {_json_kind(data)}, not an object")
    missing = [key for key in ("recipe", "recipe-pointer") if key not in data]
    if missing:
        raise InvalidMessage(f"{what}: not a recipe message, missing {', '.join(missing)}")
    try:
        recipe = Recipe.from_wire(data["recipe"])
    except InvalidRecipe as error:
        raise InvalidMessage(f"{what}: invalid recipe ({error})") from None
    pointer = _step_number(data["recipe-pointer"], "recipe-pointer", what)
    path_value = data.get("recipe-path") or []
    if not isinstance(path_value, list):
        raise InvalidMessage(
            f"{what}: bad recipe-path: a list of step ids, not {short_repr(path_value)}"
        )
    path = [_step_number(step, "recipe-path entry", what) for step in path_value]
    if max_hops is not None and len(path) > max_hops:
        raise InvalidMessage(
            f"{what}: runaway loop: its recipe-path has {len(path)} hops, more than the "
            f"limit of {max_hops} (last steps {path[-5:]})"
        )
    if pointer not in recipe.steps:
        raise InvalidMessage(
            f"{what}: recipe-pointer {short_repr(pointer)} names no step of the recipe "
            f"(steps: {short_repr(sorted(recipe.steps))})"
        )
    try:
        targets = check_routes(recipe.steps, pointer)
    except InvalidRecipe as error:
        raise InvalidMessage(f"{what}: invalid recipe ({error})") from None
    been = {*path, pointer}
    if back := [target for target in targets if target in been]:
        route = [*path[-6:], pointer, back[0]]
        raise InvalidMessage(
            f"{what}: runaway loop: step {pointer} links back to step {back[0]}, where this "
            f"message has been ({'... -> ' if len(path) > 6 else ''}"
            f"{' -> '.join(map(str, route))})"
        )
    environment = data.get("environment") or {}
    if not isinstance(environment, dict):
        raise InvalidMessage(f"{what}: environment is {_json_kind(environment)}, not an object")
    return RecipeMessage(recipe, pointer, path, environment, data.get("payload"))
