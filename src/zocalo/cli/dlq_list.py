"""zocalo dlq list: the groups of dead letters Schlockmeister keeps, one line per way of
failing."""

from __future__ import annotations

import json
import time

import click

from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import HELP_OPTIONS, record_location
from zocalo.config import SiteConfiguration
from zocalo.dlq.record import RECORD_NAME, DeadLetterRecord, Group
from zocalo.transport.dead_letters import describe_entry

#: Recipe IDs shown per group (``--json`` has up to ten).
IDS_SHOWN = 3


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def group_lines(group: Group) -> list[str]:
    """A few lines per group: long reasons and recipe IDs read whole, at any width."""
    step = "" if group.step is None else f", step {group.step}"
    ids = ", ".join(group.recipe_ids[:IDS_SHOWN])
    if len(group.recipe_ids) > IDS_SHOWN:
        ids += ", ..."
    return [
        f"group {group.id}: {group.count} dead letters ({group.waiting} waiting) "
        f"from {group.queue}{step}",
        f"  first seen {_when(group.first_seen)}, last seen {_when(group.last_seen)}",
        f"  example: {group.example}",
        f"  recipe IDs: {ids or '(none)'}",
        *(["  history of the latest, oldest first:"] if group.history else []),
        *(f"    {describe_entry(entry)}" for entry in group.history),
    ]


@click.command("list", context_settings=HELP_OPTIONS)
@click.option(
    "--location",
    metavar="DIR",
    help="Where Schlockmeister keeps dead letters (default: the site configuration's "
    "zocalo.dlq.purge_location, else DLQ in your data directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@site_config_options
def command(location: str | None, as_json: bool, site_config: SiteConfiguration) -> None:
    """Show the groups of dead letters that failed alike: how many, since when, an example,
    and their recipe IDs."""
    directory = record_location(location, site_config)
    groups: list[Group] = []
    if (directory / RECORD_NAME).exists():
        with DeadLetterRecord(directory) as record:
            groups = record.groups()
    if as_json:
        answer = {"location": str(directory), "groups": [group.to_json() for group in groups]}
        click.echo(json.dumps(answer, sort_keys=True))
    elif not groups:
        click.echo(f"No dead letters recorded in {directory}")
    else:
        for group in groups:
            for line in group_lines(group):
                click.echo(line)
