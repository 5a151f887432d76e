"""Starting work: Dispatcher requests (what zocalo.go sends) and direct recipe starts.

The rules of a processing request (a data collection or reprocessing id, at least one
recipe) live here, not in the command line, so a Dispatcher, ``--wait`` and the monitor
read a request the way ``zocalo.go`` builds it. So does the drop file a request is
stored in when the broker cannot take it (python-zocalo's ``zocalo.go`` fallback, which
its ``zocalo.pickup`` sends on later).

A job whose caller waits for its results carries a reply queue (``reply_to``): in the
request's parameters for the Dispatcher, in the recipe environment when started
directly, under the one name :data:`~zocalo.recipe.wire.REPLY_TO`. :func:`submit` is
the whole round trip from Python: start a job, iterate over its replies.
"""

from __future__ import annotations

import getpass
import json
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zocalo.errors import ZocaloError
from zocalo.private_files import write_private
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import REPLY_TO, dumps
from zocalo.replies import DEFAULT_WAIT, Replies
from zocalo.transport.base import Outgoing, Transport, reply_queue_name
from zocalo.transport.registry import create_transport

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
    #: The queue the job's replies go to, when its caller waits for them.
    reply_to: str | None = None

    def send(self, transport: Transport, timeout: float = 30.0) -> None:
        """Publish and wait until the broker has accepted every message."""
        transport.publish(self.outputs).result(timeout)


def start_for_replies(
    build: Callable[[str], Submission],
    transport: Transport,
    *,
    results: int = 1,
    timeout: float = DEFAULT_WAIT,
    send_timeout: float = 30.0,
    owns_transport: bool = False,
) -> tuple[Submission, Replies]:
    """Make the job's reply queue, build the job naming its address (``build(reply_to)``),
    send it, and return it with its replies as they come (``results`` of them, within
    ``timeout`` seconds). The queue is made and consumed first, so no reply comes before
    anyone listens; its address is known only then (ActiveMQ names it).
    """
    try:
        replies = Replies(
            transport, expected=results, timeout=timeout, owns_transport=owns_transport
        )
    except BaseException:
        if owns_transport:  # (Replies refused its arguments before it took the connection)
            transport.close()
        raise
    try:
        submission = build(replies.reply_to)
        replies.recipe_id = submission.recipe_id
        submission.send(transport, send_timeout)
    except BaseException:
        replies.close()
        raise
    return submission, replies


def submitter_headers() -> dict[str, str]:
    """Who and where, as python-zocalo's zocalo.go records it."""
    return {"zocalo.go.user": getpass.getuser(), "zocalo.go.host": socket.gethostname()}


def dispatcher_request(
    recipes: list[str],
    parameters: Mapping[str, Any],
    custom_recipe: Recipe | None = None,
    *,
    reply_to: str | None = None,
) -> Submission:
    """A request for the Dispatcher: named recipes, parameters, optional inline recipe.

    The parameters get a ``guid`` (a fresh uuid4) unless they have one: the Dispatcher
    makes it the recipe ID, so the caller knows which job to follow in the logs. With
    ``reply_to`` they name the queue the job's replies go to (our Dispatcher puts it in
    the recipe environment; python-zocalo's ignores it, and nothing replies).
    """
    body: dict[str, Any] = {"recipes": list(recipes), "parameters": dict(parameters)}
    recipe_id = str(body["parameters"].get("guid") or uuid.uuid4())
    body["parameters"]["guid"] = recipe_id
    if reply_to is not None:
        body["parameters"][REPLY_TO] = reply_to
    if custom_recipe is not None:
        custom_recipe.validate()
        body["custom_recipe"] = custom_recipe.to_dict()
    headers = submitter_headers()
    outgoing = Outgoing(DISPATCHER_QUEUE, dumps(body).encode("utf-8"), headers)
    return Submission(DISPATCHER_QUEUE, headers, body, [outgoing], recipe_id, reply_to)


def write_drop_file(directory: str | Path, submission: Submission) -> Path:
    """Store a request the broker could not take as ``<directory>/<uuid4>``.

    The format is python-zocalo's (its ``zocalo.pickup`` sends such files on): pretty
    JSON ``{"headers": ..., "message": ...}`` and a newline. The file is private and
    durable before this returns, and appears whole, so a pickup never reads half a
    request (see :func:`~zocalo.private_files.write_private`).
    """
    folder = Path(directory).expanduser()
    text = json.dumps({"headers": submission.headers, "message": submission.body}, indent=2)
    return write_private(folder / str(uuid.uuid4()), (text + "\n").encode("utf-8"))


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
    reply_to: str | None = None,
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
    return dispatcher_request(list(recipes), checked, custom_recipe, reply_to=reply_to)


def direct_start(
    recipe: Recipe,
    parameters: Mapping[str, Any],
    environment: Mapping[str, Any] | None = None,
    *,
    dcid: int | None = None,
    reply_to: str | None = None,
) -> tuple[str, Submission]:
    """Start ``recipe`` without a Dispatcher: substitute parameters, fresh recipe ID.

    ``dcid``, a data collection id, is offered as the ``ispyb_dcid`` parameter unless
    ``parameters`` name one. ``reply_to`` goes into the environment: the queue the
    job's replies go to.
    """
    parameters = dict(parameters)
    if dcid is not None:
        parameters.setdefault("ispyb_dcid", dcid)
    recipe = recipe.copy()
    recipe.apply_parameters(parameters)
    environment = dict(environment or {})
    if reply_to is not None:
        environment[REPLY_TO] = reply_to
    step = RecipeStep()
    recipe_id = step.start(recipe, environment=environment)
    first = step.outputs[0] if step.outputs else None
    body = first.body.decode() if first else None
    queue = first.destination if first else ""
    headers = dict(first.headers) if first else {}
    return recipe_id, Submission(queue, headers, body, step.outputs, recipe_id, reply_to)


def submit(
    transport: Transport | str,
    recipes: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    recipe: Recipe | Mapping[str, Any] | None = None,
    *,
    direct: bool = False,
    dcid: int | None = None,
    reprocessing: bool = False,
    dcid_required: bool = True,
    autoprocscalingid: int | None = None,
    results: int = 1,
    timeout: float = DEFAULT_WAIT,
) -> Replies:
    """Start a job and iterate over its replies, as ``zocalo.go --wait`` does::

        for reply in submit("sqlite:///...", ["spots"], {"image": 7}, dcid=1234, results=3):
            print(reply.step, reply.payload)

    A request to the Dispatcher (the recipes named, ``recipe`` merged in, the rules of
    :func:`processing_request`), or with ``direct`` the ``recipe`` itself. The replies
    come as :class:`~zocalo.recipe.wire.Reply` values: ``results`` of them end the
    iteration, and :class:`~zocalo.replies.ReplyTimeout` says if they did not all come
    within ``timeout`` seconds. ``transport`` is a connected :class:`Transport`, or a
    broker URL to open a connection of the job's own (closed when the replies end).
    """
    custom = recipe if recipe is None or isinstance(recipe, Recipe) else Recipe(recipe)
    if direct and custom is None:
        raise ValueError("direct=True starts the recipe given as recipe=")

    def build(reply_to: str) -> Submission:
        if direct:
            assert custom is not None  # checked above
            return direct_start(custom, parameters or {}, dcid=dcid, reply_to=reply_to)[1]
        return processing_request(
            recipes,
            parameters,
            custom,
            dcid=dcid,
            reprocessing=reprocessing,
            dcid_required=dcid_required,
            autoprocscalingid=autoprocscalingid,
            reply_to=reply_to,
        )

    build(reply_queue_name())  # a request that breaks a rule is refused before connecting
    if not isinstance(transport, str):
        return start_for_replies(build, transport, results=results, timeout=timeout)[1]
    connection = create_transport(transport)
    try:
        connection.connect()
    except BaseException:
        connection.close()
        raise
    return start_for_replies(
        build, connection, results=results, timeout=timeout, owns_transport=True
    )[1]
