"""zocalo cancel: stop a recipe's work (its Slurm jobs, its running wrappers)."""

from __future__ import annotations

import click

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.recipe.cancel import broadcast_cancel


@click.command("cancel")
@click.argument("recipe_ids", nargs=-1, required=True, metavar="RECIPE_ID...")
@transport_option
@site_config_options
def command(
    recipe_ids: tuple[str, ...], transport: str | None, site_config: SiteConfiguration
) -> None:
    """Broadcast the cancellation of each RECIPE_ID on the 'zocalo.cancel' topic.

    The cluster submission service cancels the recipe's Slurm jobs and submits no more
    for it; zocalo.wrap stops a wrapper of the recipe (CommandWrapper: its program's
    whole process group). Only listeners connected now hear it.
    """
    url = resolve_transport(transport, site_config)
    with open_broker(url) as broker:
        for recipe_id in recipe_ids:
            click.echo(f"sent {broadcast_cancel(broker, recipe_id)}")
