"""zocalo dlq list: the groups of dead letters Schlockmeister keeps, one line per way of
failing."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import HELP_OPTIONS, record_location
from zocalo.config import SiteConfiguration
from zocalo.dlq.record import RECORD_NAME, DeadLetterRecord, Group

#: Recipe IDs shown per row (``--json`` has up to ten).
IDS_SHOWN = 3


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def group_table(groups: list[Group]) -> Table:
    table = Table(
        "group",
        "count",
        "waiting",
        "queue",
        "step",
        "first seen",
        "last seen",
        "example",
        "recipe IDs",
    )
    for group in groups:
        ids = ", ".join(group.recipe_ids[:IDS_SHOWN])
        if len(group.recipe_ids) > IDS_SHOWN:
            ids += ", ..."
        table.add_row(
            str(group.id),
            str(group.count),
            str(group.waiting),
            group.queue,
            "" if group.step is None else str(group.step),
            _when(group.first_seen),
            _when(group.last_seen),
            group.example,
            ids,
        )
    return table


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
        Console().print(group_table(groups))
