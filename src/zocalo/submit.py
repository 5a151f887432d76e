"""Starting work: Dispatcher requests (what zocalo.go sends) and direct recipe starts.

The rules of a processing request (a data collection or reprocessing id, at least one
recipe) live here, not in the command line, so a Dispatcher, ``--wait`` and the monitor
read a request the way ``zocalo.go`` builds it. So does the drop file a request is
stored in when the broker cannot take it (python-zocalo's ``zocalo.go`` fallback, which
its ``zocalo.pickup`` sends on later).
"""

from __future__ import annotations

import getpass
import json
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zocalo.errors import ZocaloError
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import dumps
from zocalo.transport.base import Outgoing, Transport

#: The Dispatcher's queue.
DISPATCHER_QUEUE = "processing_recipe"
#: The site configuration's ``storage`` key naming where requests are stored when the
#: broker cannot take them (python-zocalo's).
FALLBACK_KEY = "zocalo.go.fallback_location"


class InvalidRequest(ZocaloError, ValueError):
    """A processing request that breaks a rule of python-zocalo's ``zocalo.go``."""


class MissingRecipe(InvalidRequest):
    """A request that names no recipe, and is neither a reprocessing (whose record names
    its recipes) nor a request without a data collection."""


class MissingId(InvalidRequest):
    """A data collection (or reprocessing) id is required and none above 0 was given."""


@dataclass
class Submission:
    """Exactly what will be sent: destination, headers and body."""

    queue: str
    headers: dict[str, Any]
    body: Any
    outputs: list[Outgoing] = field(default_factory=list)
    #: The recipe ID the job will run under (the request's ``guid``), when known.
    recipe_id: str | None = None

    def send(self, transport: Transport, timeout: float = 30.0) -> None:
        """Publish and wait until the broker has accepted every message."""
        transport.publish(self.outputs).result(timeout)


def submitter_headers() -> dict[str, str]:
    """Who and where, as python-zocalo's zocalo.go records it."""
    return {"zocalo.go.user": getpass.getuser(), "zocalo.go.host": socket.gethostname()}


def dispatcher_request(
    recipes: list[str],
    parameters: Mapping[str, Any],
    custom_recipe: Recipe | None = None,
) -> Submission:
    """A request for the Dispatcher: named recipes, parameters, optional inline recipe.

    The parameters get a ``guid`` (a fresh uuid4) unless they have one: the Dispatcher
    makes it the recipe ID, so the caller knows which job to follow in the logs.
    """
    body: dict[str, Any] = {"recipes": list(recipes), "parameters": dict(parameters)}
    recipe_id = str(body["parameters"].get("guid") or uuid.uuid4())
    body["parameters"]["guid"] = recipe_id
    if custom_recipe is not None:
        custom_recipe.validate()
        body["custom_recipe"] = custom_recipe.to_dict()
    headers = submitter_headers()
    outgoing = Outgoing(DISPATCHER_QUEUE, dumps(body).encode("utf-8"), headers)
    return Submission(DISPATCHER_QUEUE, headers, body, [outgoing], recipe_id)


def write_drop_file(directory: str | Path, submission: Submission) -> Path:
    """Store a request the broker could not take as ``<directory>/<uuid4>``.

    The format is python-zocalo's (its ``zocalo.pickup`` sends such files on): pretty
    JSON ``{"headers": ..., "message": ...}`` and a newline. The file appears whole
    (written beside it, then renamed), so a pickup never reads half a request.
    """
    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / str(uuid.uuid4())
    text = json.dumps({"headers": submission.headers, "message": submission.body}, indent=2)
    partial = folder / f".{path.name}.partial"
    partial.write_text(text + "\n")
    partial.replace(path)
    return path


def request_parameters(
    parameters: Mapping[str, Any],
    *,
    has_recipe: bool,
    dcid: int | None = None,
    reprocessing: bool = False,
    dcid_required: bool = True,
    autoprocscalingid: int | None = None,
) -> dict[str, Any]:
    """``parameters`` plus the ids of a processing request, by ``zocalo.go``'s rules.

    A request names a recipe (``has_recipe``: by name or inline) unless it is a
    reprocessing, whose record names its recipes, or ``dcid_required`` is False. Unless
    ``dcid_required`` is False, ``dcid`` (above 0) goes in as ``ispyb_dcid``, or with
    ``reprocessing`` as ``ispyb_process``. ``autoprocscalingid`` goes in as
    ``ispyb_autoprocscalingid``. Raises :class:`MissingRecipe` or :class:`MissingId`.
    """
    if not (has_recipe or reprocessing or not dcid_required):
        raise MissingRecipe("a request names no recipe")
    result = dict(parameters)
    if dcid_required:
        if isinstance(dcid, bool) or not isinstance(dcid, int) or dcid <= 0:
            kind = "reprocessing id (> 0)" if reprocessing else "data collection id (DCID > 0)"
            raise MissingId(f"a {kind} is required")
        result["ispyb_process" if reprocessing else "ispyb_dcid"] = dcid
    if autoprocscalingid is not None:
        result["ispyb_autoprocscalingid"] = autoprocscalingid
    return result


def processing_request(
    recipes: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    custom_recipe: Recipe | None = None,
    *,
    dcid: int | None = None,
    reprocessing: bool = False,
    dcid_required: bool = True,
    autoprocscalingid: int | None = None,
) -> Submission:
    """The Dispatcher request ``zocalo.go`` sends: :func:`request_parameters`' rules, then
    :func:`dispatcher_request`."""
    checked = request_parameters(
        parameters or {},
        has_recipe=bool(recipes) or custom_recipe is not None,
        dcid=dcid,
        reprocessing=reprocessing,
        dcid_required=dcid_required,
        autoprocscalingid=autoprocscalingid,
    )
    return dispatcher_request(list(recipes), checked, custom_recipe)


def direct_start(
    recipe: Recipe,
    parameters: Mapping[str, Any],
    environment: Mapping[str, Any] | None = None,
    *,
    dcid: int | None = None,
) -> tuple[str, Submission]:
    """Start ``recipe`` without a Dispatcher: substitute parameters, fresh recipe ID.

    ``dcid``, a data collection id, is offered as the ``ispyb_dcid`` parameter unless
    ``parameters`` name one.
    """
    parameters = dict(parameters)
    if dcid is not None:
        parameters.setdefault("ispyb_dcid", dcid)
    recipe = recipe.copy()
    recipe.apply_parameters(parameters)
    step = RecipeStep()
    recipe_id = step.start(recipe, environment=environment)
    first = step.outputs[0] if step.outputs else None
    body = first.body.decode() if first else None
    queue = first.destination if first else ""
    headers = dict(first.headers) if first else {}
    return recipe_id, Submission(queue, headers, body, step.outputs, recipe_id)
