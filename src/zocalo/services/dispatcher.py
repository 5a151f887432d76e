"""The Dispatcher: where every job enters (``zocalo.service -s Dispatcher``).

It consumes processing requests on ``processing_recipe``, as python-zocalo's
Dispatcher does, so either side's ``zocalo.go`` feeds either side's Dispatcher::

    {"recipes": ["name", ...], "custom_recipe": {...}, "parameters": {...}}

For each request:

1. the recipe ID is ``parameters["guid"]``, or a fresh uuid4 written there;
2. readiness plugins (entry point group ``zocalo.services.dispatcher.ready_for_processing``,
   each ``check(request, parameters) -> bool``) may hold the request back: it is sent
   again to ``processing_recipe`` 2 s later, until they agree or
   ``parameters["dispatcher_timeout"]`` (120 s) has passed; then it goes to
   ``parameters["dispatcher_error_queue"]`` if named, else to the dead-letter queue;
3. filters run in order: those of the entry point group
   ``zocalo.services.dispatcher.filters`` (each ``f(message, parameters) -> (message,
   parameters)``, where ``message`` is a copy of the request whose ``"recipe"`` is the
   recipe being built, empty at first: a facility's lookups, e.g. from a database,
   happen once, here), then the request's ``custom_recipe`` is merged in, then each
   named recipe from the recipe library (the site configuration's ``storage`` key
   ``zocalo.recipe_directory``), then the parameters are substituted;
4. the recipe starts with the environment ``{"ID": recipe ID}``: its first messages
   and the acknowledgement of the request are one publish, so a Dispatcher that dies
   half-way starts nothing and the request comes back. A request whose parameters
   name a reply queue (``zocalo_reply_to``, from ``zocalo.go --wait``) puts it in the
   environment too, where ``step.reply`` finds it; a sub-recipe (below) keeps the
   reply queue of the recipe that started it unless its request names another;
5. with ``zocalo.dispatcher.logbook_location`` set, the request is written to the
   logbook (:mod:`zocalo.services.dispatcher_logbook`).

A recipe message whose payload is a request works too: a recipe step with queue
``processing_recipe`` starts a sub-recipe, with a recipe ID of its own.

A request that cannot be started (not an object, parameters that are not an
object, an unknown recipe name, an invalid recipe, a filter or readiness check
that raises) goes to ``dlq.processing_recipe`` at once, with a reason that names
the recipe ID and the recipe, step or filter at fault; the Dispatcher goes on with
the next request. (python-zocalo nacks it, to be redelivered until the broker's
delivery limit: retrying cannot make an unknown recipe known.)
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from zocalo.errors import InvalidMessage, InvalidRecipe, ZocaloError
from zocalo.logs import recipe_context
from zocalo.recipe import Recipe
from zocalo.recipe.library import RecipeLibrary, UnknownRecipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.validation import check_every_route, short_repr
from zocalo.recipe.wire import REPLY_TO
from zocalo.service import Service, handler
from zocalo.services.dispatcher_logbook import Logbook
from zocalo.submission import DISPATCHER_QUEUE

FILTER_GROUP = "zocalo.services.dispatcher.filters"
READINESS_GROUP = "zocalo.services.dispatcher.ready_for_processing"
#: Seconds until a request that is not ready is checked again (python-zocalo's).
RECHECK_DELAY = 2.0
#: Seconds a request may wait for readiness unless it says (``dispatcher_timeout``).
DEFAULT_TIMEOUT = 120.0
#: Headers of a request that travel with it when it is sent again (who submitted it).
_KEPT_HEADER_PREFIX = "zocalo.go."

log = logging.getLogger("zocalo.services.dispatcher")

Filter = Callable[[dict[str, Any], dict[str, Any]], Any]


class BadRequest(InvalidMessage):
    """A request the Dispatcher cannot start; the reason names the recipe ID and the fault."""


class PluginError(ZocaloError):
    """A Dispatcher plugin (filter, readiness check) that cannot be loaded."""


class _Unusable(ZocaloError):
    """Raised by a built-in step: the request itself is at fault (not a filter)."""


@dataclass(frozen=True)
class Plugin:
    """A filter or readiness check: its entry point name, where it lives, the callable."""

    name: str
    origin: str
    function: Callable[..., Any]

    def describe(self) -> str:
        return f"{self.name!r} ({self.origin})"


def load_plugins(group: str) -> list[Plugin]:
    """Every plugin of entry point ``group``, in the order ``importlib.metadata`` lists them.

    One that cannot be imported stops the Dispatcher from starting: running without a
    site's filter would start recipes that lack what it looks up.
    """
    plugins: dict[str, Plugin] = {}
    for entry in entry_points(group=group):
        if entry.name in plugins:
            log.warning("%s: %s is registered twice; using the first", group, entry.name)
            continue
        try:
            function = entry.load()
        except Exception as error:
            raise PluginError(
                f"{group} plugin {entry.name!r} ({entry.value}) cannot be loaded: "
                f"{type(error).__name__}: {error}"
            ) from None
        if not callable(function):
            raise PluginError(f"{group} plugin {entry.name!r} ({entry.value}) is not callable")
        plugins[entry.name] = Plugin(entry.name, entry.value, function)
    return list(plugins.values())


def _as_recipe(value: Any) -> Recipe:
    """The recipe a filter left in ``message["recipe"]`` (a Recipe, a dict or nothing)."""
    return value if isinstance(value, Recipe) else Recipe(value)


class Dispatcher(Service):
    """Turns processing requests into running recipes (see the module docstring)."""

    name = "Dispatcher"

    #: Set up by ``initializing``, from the site configuration and the entry points.
    library: RecipeLibrary | None
    logbook: Logbook | None
    filters: list[Plugin]
    readiness: list[Plugin]

    def initializing(self) -> None:
        storage = self.site_config.storage
        self.library = RecipeLibrary.from_storage(storage)
        self.logbook = Logbook.from_storage(storage)
        self.filters = load_plugins(FILTER_GROUP)
        self.readiness = load_plugins(READINESS_GROUP)
        self.log.info(
            "recipe library %s; filters: %s; readiness checks: %s",
            self.library.directory
            if self.library
            else "(none: storage has no zocalo.recipe_directory)",
            ", ".join(plugin.describe() for plugin in self.filters) or "none",
            ", ".join(plugin.describe() for plugin in self.readiness) or "none",
        )

    @handler(DISPATCHER_QUEUE, prefetch=10, allow_plain=True)
    def dispatch(self, step: RecipeStep, request: Any) -> None:
        """Start the recipe ``request`` asks for, or hold it back until it is ready."""
        began = time.perf_counter()
        if not isinstance(request, dict):
            raise self._refuse(None, f"a request must be a JSON object, not {short_repr(request)}")
        parameters = request.setdefault("parameters", {})
        if not isinstance(parameters, dict):
            raise self._refuse(
                None, f"'parameters' must be a JSON object, not {short_repr(parameters)}"
            )
        recipe_id = str(parameters.get("guid") or uuid.uuid4())
        parameters["guid"] = recipe_id
        if step.recipe_id is not None:
            self.log.info("request from step %s starts recipe %s", step.pointer, recipe_id)
        with recipe_context(recipe_id, None):
            environment = self._environment(recipe_id, parameters, step)
            original = copy.deepcopy(request) if self.logbook else None
            waiting_on = self._not_ready(recipe_id, request, parameters)
            if waiting_on is not None:
                self._hold_back(step, recipe_id, request, parameters, waiting_on)
                return
            message, recipe = self._build(recipe_id, request, parameters)
            step.start(recipe, environment=environment)
            if self.logbook is not None:
                parsed = {**message, "recipe": recipe.to_dict()}
                self.logbook.record(recipe_id, step.headers, original, parsed, recipe.to_dict())
            self.log.info(
                "recipe %s started (%s) in %.1f ms",
                recipe_id,
                _what_ran(request),
                (time.perf_counter() - began) * 1000,
            )

    # -- refusing -----------------------------------------------------------
    def _refuse(self, recipe_id: str | None, reason: str) -> BadRequest:
        """The error that dead-letters a request; logged once, with the recipe ID."""
        text = f"request refused: {reason}"
        if recipe_id is not None:
            text = f"recipe {recipe_id}: {text}"
        self.log.error("%s", text)
        return BadRequest(text)

    def _environment(
        self, recipe_id: str, parameters: dict[str, Any], step: RecipeStep
    ) -> dict[str, Any]:
        """The new recipe's environment: its ID, and the queue its replies go to, if any
        (the request's, else that of the recipe whose step sent the request)."""
        environment: dict[str, Any] = {"ID": recipe_id}
        reply_to = parameters.get(REPLY_TO, step.environment.get(REPLY_TO))
        if reply_to is not None:
            if not isinstance(reply_to, str) or not reply_to:
                raise self._refuse(
                    recipe_id, f"{REPLY_TO!r} must be a queue name, not {short_repr(reply_to)}"
                )
            environment[REPLY_TO] = reply_to
        return environment

    # -- readiness ----------------------------------------------------------
    def _not_ready(
        self, recipe_id: str, request: dict[str, Any], parameters: dict[str, Any]
    ) -> str | None:
        """The first readiness check that says no, or None when all agree."""
        for plugin in self.readiness:
            try:
                ready = plugin.function(request, parameters)
            except Exception as error:
                raise self._refuse(
                    recipe_id,
                    f"readiness check {plugin.describe()} raised {type(error).__name__}: {error}",
                ) from error
            if not ready:
                return plugin.name
        return None

    def _hold_back(
        self,
        step: RecipeStep,
        recipe_id: str,
        request: dict[str, Any],
        parameters: dict[str, Any],
        waiting_on: str,
    ) -> None:
        """Send the request round again later, or give up on it once it has expired."""
        try:
            timeout = float(parameters.get("dispatcher_timeout", DEFAULT_TIMEOUT))
            parameters.setdefault("dispatcher_expiration", time.time() + timeout)
            expiration = float(parameters["dispatcher_expiration"])
        except (TypeError, ValueError):
            raise self._refuse(
                recipe_id,
                "'dispatcher_timeout' and 'dispatcher_expiration' must be numbers of seconds, "
                f"not {short_repr(parameters.get('dispatcher_timeout'))} and "
                f"{short_repr(parameters.get('dispatcher_expiration'))}",
            ) from None
        headers = {
            name: value
            for name, value in step.headers.items()
            if name.startswith(_KEPT_HEADER_PREFIX)
        }
        if expiration > time.time():
            step.send_plain(DISPATCHER_QUEUE, request, headers=headers, delay=RECHECK_DELAY)
            self.log.info(
                "not ready for processing (%s says not yet): checking again in %g s",
                waiting_on,
                RECHECK_DELAY,
            )
            return
        error_queue = parameters.get("dispatcher_error_queue")
        if error_queue:
            if not isinstance(error_queue, str):
                raise self._refuse(
                    recipe_id,
                    f"'dispatcher_error_queue' must be a queue name, not {short_repr(error_queue)}",
                )
            step.send_plain(error_queue, request, headers=headers)
            self.log.info(
                "still not ready for processing (%s says not yet) when the request expired: "
                "sent to %s",
                waiting_on,
                error_queue,
            )
            return
        raise self._refuse(
            recipe_id,
            f"still not ready for processing when the request expired ({waiting_on!r} says "
            "not yet), and it names no 'dispatcher_error_queue'",
        )

    # -- building the recipe ------------------------------------------------
    def _build(
        self, recipe_id: str, request: dict[str, Any], parameters: dict[str, Any]
    ) -> tuple[dict[str, Any], Recipe]:
        """Run the filters, merges and substitution; the filtered request (with the
        parameters they produced) and its recipe."""
        message = copy.deepcopy(request)
        message["recipe"] = Recipe()
        parameters = copy.deepcopy(parameters)
        steps = [
            *self.filters,
            Plugin("load_custom_recipe", "the request's custom_recipe", _merge_custom_recipe),
            Plugin("load_recipes_from_files", "the recipe library", self._merge_named_recipes),
            Plugin("apply_parameters", "parameter substitution", _apply_parameters),
        ]
        for plugin in steps:
            try:
                result = plugin.function(message, parameters)
            except _Unusable as error:
                raise self._refuse(recipe_id, str(error)) from None
            except Exception as error:
                raise self._refuse(
                    recipe_id, f"filter {plugin.describe()} raised {type(error).__name__}: {error}"
                ) from error
            if not (
                isinstance(result, tuple | list)
                and len(result) == 2
                and isinstance(result[0], dict)
                and isinstance(result[1], dict)
            ):
                raise self._refuse(
                    recipe_id,
                    f"filter {plugin.describe()} returned {short_repr(result)}, "
                    "not (message, parameters)",
                )
            message, parameters = result
        try:
            recipe = _as_recipe(message.get("recipe"))
            if recipe.is_empty:
                raise _Unusable("it names no recipe (no 'recipes', no 'custom_recipe')")
            recipe.validate()
            check_every_route(recipe.steps)
        except (InvalidRecipe, _Unusable) as error:
            raise self._refuse(recipe_id, f"the recipe to start is unusable: {error}") from None
        message["parameters"] = parameters  # what the filters made of them, for the logbook
        return message, recipe

    def _merge_named_recipes(
        self, message: dict[str, Any], parameters: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        names = message.get("recipes") or []
        if not isinstance(names, list):
            raise _Unusable(f"'recipes' must be a list of recipe names, not {short_repr(names)}")
        if names and self.library is None:
            raise _Unusable(
                f"it names recipes {names}, but the site configuration's storage has no "
                "zocalo.recipe_directory to load them from"
            )
        for name in names:
            assert self.library is not None
            try:
                named = self.library.load(name)
                message["recipe"] = _as_recipe(message.get("recipe")).merge(named)
            except (UnknownRecipe, InvalidRecipe) as error:
                raise _Unusable(str(error)) from None
        return message, parameters


def _merge_custom_recipe(
    message: dict[str, Any], parameters: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    custom = message.get("custom_recipe")
    if custom:
        if not isinstance(custom, Mapping):
            raise _Unusable(f"'custom_recipe' must be a JSON object, not {short_repr(custom)}")
        try:
            recipe = Recipe(custom)
            recipe.validate()
            message["recipe"] = _as_recipe(message.get("recipe")).merge(recipe)
        except InvalidRecipe as error:
            raise _Unusable(f"custom_recipe: {error}") from None
    return message, parameters


def _apply_parameters(
    message: dict[str, Any], parameters: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        recipe = _as_recipe(message.get("recipe"))
        recipe.apply_parameters(parameters)
    except InvalidRecipe as error:
        raise _Unusable(str(error)) from None
    message["recipe"] = recipe
    return message, parameters


def _what_ran(request: Mapping[str, Any]) -> str:
    """``recipes a, b + custom recipe``: what a request asked for, for the log."""
    parts = []
    if request.get("recipes"):
        parts.append("recipes " + ", ".join(map(str, request["recipes"])))
    if request.get("custom_recipe"):
        parts.append("custom recipe")
    return " + ".join(parts) or "recipe from the filters"
