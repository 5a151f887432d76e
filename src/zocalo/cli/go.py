"""zocalo.go: submit a processing request (or, with --direct, start a recipe).

A request goes to the Dispatcher's queue exactly as python-zocalo's ``zocalo.go`` sends
it, plus a ``guid`` parameter (the recipe ID, printed so the job can be followed). If
the broker cannot take it and the site configuration names a fallback location
(``storage`` key ``zocalo.go.fallback_location``), the request is stored there for
``zocalo.pickup`` instead (``--drop`` stores it without trying the broker).

``--wait [SECONDS]`` (and ``--results N``) give the job a private reply queue first and
print each reply a step sends (``step.reply``) as a JSON line on stdout as it arrives,
everything else on stderr; the command ends after N replies, or with an error once
SECONDS have passed. A job that waits is never stored in the fallback location: its
caller needs the broker to hear back anyway.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import click

from zocalo.cli.common import (
    broker_errors,
    fail,
    open_broker,
    resolve_transport,
    transport_option,
)
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.errors import ZocaloError
from zocalo.recipe import Recipe
from zocalo.recipe.validation import check_destinations
from zocalo.replies import DEFAULT_WAIT, ReplyTimeout
from zocalo.submission import (
    FALLBACK_KEY,
    InvalidRequest,
    MissingId,
    MissingRecipe,
    Submission,
    direct_start,
    processing_request,
    start_for_replies,
    write_drop_file,
)
from zocalo.transport.base import Transport, reply_queue_name
from zocalo.transport.registry import create_transport

#: What to give on this command line when a request breaks one of the library's rules.
_REQUEST_HINTS: dict[type[InvalidRequest], str] = {
    MissingRecipe: "give at least one of -r, -f, -n, -p",
    MissingId: "give DCID, or -n",
}


def _parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise click.UsageError(f"-s {setting!r}: expected KEY=VALUE")
        parameters[key] = value
    return parameters


def _load_recipe(path: Path) -> Recipe:
    try:
        recipe = Recipe(path.read_text())
        recipe.validate()
        check_destinations(recipe.steps)
    except (OSError, ValueError) as error:
        raise click.UsageError(f"recipe file {path}: {error}") from None
    return recipe


def _print(submission: Submission, *, err: bool = False) -> None:
    for message in submission.outputs:
        kind = "topic" if message.broadcast else "queue"
        click.echo(f"destination: {kind} {message.destination}", err=err)
        click.echo(f"headers: {json.dumps(message.headers, sort_keys=True)}", err=err)
        click.echo(f"body: {message.body.decode()}", err=err)


@click.command("go")
@click.argument("dcid", required=False, type=int)
@click.option(
    "-r", "--recipe", "recipes", multiple=True, metavar="NAME", help="Recipe name (repeatable)."
)
@click.option(
    "-f",
    "--file",
    "recipe_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Custom recipe JSON file.",
)
@click.option(
    "-s",
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Recipe parameter (repeatable).",
)
@click.option("-n", "--no-dcid", is_flag=True, help="Do not require a data collection id.")
@click.option("-p", "--reprocessing", is_flag=True, help="DCID is a reprocessing id.")
@click.option("-a", "--autoprocscalingid", type=int, help="AutoProcScaling id.")
@click.option("--direct", is_flag=True, help="Start the -f recipe itself, without a Dispatcher.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.option(
    "--drop",
    is_flag=True,
    hidden=True,
    help="Store the request in the fallback location instead of sending it.",
)
@click.option("-v", "--verbose", is_flag=True, help="Print the message sent.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, min_open=True),
    is_flag=False,
    flag_value=DEFAULT_WAIT,
    default=None,
    metavar="[SECONDS]",
    help=f"Print each reply of the job (step.reply) as a JSON line as it arrives; give up "
    f"after SECONDS (default {DEFAULT_WAIT:g}). Put DCID before it, or write --wait=SECONDS.",
)
@click.option(
    "--results",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="How many replies to wait for (default 1); implies --wait.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the broker to confirm the message(s).",
)
@transport_option
@site_config_options
def command(
    dcid: int | None,
    recipes: tuple[str, ...],
    recipe_file: Path | None,
    settings: tuple[str, ...],
    no_dcid: bool,
    reprocessing: bool,
    autoprocscalingid: int | None,
    direct: bool,
    dry_run: bool,
    drop: bool,
    verbose: bool,
    wait: float | None,
    results: int | None,
    timeout: float,
    transport: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Submit a processing request for DCID to the Dispatcher."""
    parameters = _parse_settings(settings)
    custom = _load_recipe(recipe_file) if recipe_file else None
    if direct and custom is None:
        raise click.UsageError("--direct starts the recipe given with -f FILE")
    waiting = wait is not None or results is not None
    if waiting and (dry_run or drop):
        raise click.UsageError(
            f"{'--dry-run' if dry_run else '--drop'} sends nothing now: there are no "
            "replies to --wait for"
        )

    def build(reply_to: str | None) -> tuple[str | None, Submission]:
        """The job (and its recipe ID when started directly), naming ``reply_to``."""
        if custom is not None and direct:
            return direct_start(custom, parameters, dcid=dcid, reply_to=reply_to)
        return None, processing_request(
            recipes,
            parameters,
            custom,
            dcid=dcid,
            reprocessing=reprocessing,
            dcid_required=not no_dcid,
            autoprocscalingid=autoprocscalingid,
            reply_to=reply_to,
        )

    try:
        # When waiting, built again once the reply queue's address is known.
        recipe_id, submission = build(reply_queue_name() if waiting else None)
    except InvalidRequest as error:
        hint = _REQUEST_HINTS.get(type(error))
        raise click.UsageError(f"{error}: {hint}" if hint else str(error)) from None
    except ZocaloError as error:
        raise click.UsageError(str(error)) from None
    if waiting:
        url = resolve_transport(transport, site_config)
        _wait_for_replies(
            submission,
            lambda reply_to: build(reply_to)[1],
            url,
            wait or DEFAULT_WAIT,
            results or 1,
            timeout,
            verbose,
        )
        return
    fallback = _fallback_location(site_config, drop=drop, direct=direct)
    if dry_run:
        _print(submission)
        if drop:
            click.echo(f"not storing the request in {fallback} (running with --dry-run)")
        return
    if drop and fallback:
        _store(submission, fallback)
        return
    _deliver(submission, resolve_transport(transport, site_config), timeout, fallback)
    if verbose:
        _print(submission)
    if recipe_id:
        click.echo(f"started recipe {recipe_id}")
    else:
        click.echo(f"submitted recipe {submission.recipe_id} to {submission.queue}")


def _fallback_location(site_config: SiteConfiguration, *, drop: bool, direct: bool) -> str | None:
    """Where a request the broker cannot take is stored (None: nowhere, it is an error)."""
    if direct:
        if drop:
            raise click.UsageError(
                "--drop stores a request for the Dispatcher; --direct makes none"
            )
        return None
    location = site_config.storage.get(FALLBACK_KEY)
    if drop and not location:
        raise click.UsageError(
            f"--drop stores the request in the site configuration's storage {FALLBACK_KEY}, "
            "and it names none"
        )
    return str(location) if location else None


def _deliver(submission: Submission, url: str, timeout: float, fallback: str | None) -> None:
    """Send; if the broker cannot be reached or refuses the request, store it in ``fallback``
    (and end the command there), or without one end with the error."""
    if not fallback:
        with open_broker(url) as broker:
            _send(submission, broker, timeout)
        return
    with broker_errors():  # a URL no broker could have: an error, not a reason to store
        broker = create_transport(url)
    try:
        broker.connect()
        _send(submission, broker, timeout)
    except ZocaloError as error:
        click.echo(f"the broker did not take the request: {error}", err=True)
        _store(submission, fallback)
        raise click.exceptions.Exit(0) from None
    finally:
        with contextlib.suppress(ZocaloError):
            broker.close()


def _send(submission: Submission, broker: Transport, timeout: float) -> None:
    try:
        submission.send(broker, timeout)
    except TimeoutError:
        fail(
            f"the broker did not confirm the {len(submission.outputs)} message(s) to "
            f"{submission.queue} within {timeout:g} s; they may or may not arrive"
        )


def _wait_for_replies(
    checked: Submission,
    build: Callable[[str], Submission],
    url: str,
    seconds: float,
    results: int,
    send_timeout: float,
    verbose: bool,
) -> None:
    """Make the reply queue, send the job ``build`` makes naming it (``checked`` is one
    made before, to check it), then print each reply's payload as a JSON line on stdout
    as it arrives (all else on stderr, so stdout can be piped); exit 1 saying how many
    came if too few do."""
    expected = f"{results} {'reply' if results == 1 else 'replies'}"
    with open_broker(url) as broker:
        try:
            submission, replies = start_for_replies(
                build, broker, results=results, timeout=seconds, send_timeout=send_timeout
            )
        except TimeoutError:
            fail(
                f"the broker did not confirm the {len(checked.outputs)} message(s) to "
                f"{checked.queue} within {send_timeout:g} s; they may or may not arrive"
            )
        if verbose:
            _print(submission, err=True)
        click.echo(
            f"recipe {submission.recipe_id} sent to {submission.queue}; waiting up to "
            f"{seconds:g} s for {expected}",
            err=True,
        )
        try:
            for reply in replies:
                click.echo(json.dumps(reply.payload))
        except ReplyTimeout as error:
            fail(str(error))


def _store(submission: Submission, fallback: str) -> None:
    try:
        path = write_drop_file(fallback, submission)
    except OSError as error:
        fail(f"could not store the request in {fallback}: {error}")
    click.echo(f"stored recipe {submission.recipe_id} in {path}, for zocalo.pickup to send")


def main() -> None:
    command(prog_name="zocalo.go")


if __name__ == "__main__":
    main()
