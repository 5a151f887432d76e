"""zocalo.configure_rabbitmq: apply a declared RabbitMQ topology through the management API.

The file format is python-zocalo's (see :mod:`zocalo.rabbitmq_admin.topology`). Differences
from python-zocalo's tool, all on the side of safety (see :mod:`zocalo.rabbitmq_admin.plan`):
only the vhosts the file names are managed (not every vhost on the broker); vhosts and
users are deleted only if they carry the owner tag the tool puts on what it creates;
what running services use (queues with consumers or messages, the dead-letter queues of
queues that stay, the transport's ``zocalo.delay.*`` topology) is kept unless ``--force``;
deleting a vhost needs ``--force``; ``--dry-run`` shows the changes without making them.
"""

from __future__ import annotations

from pathlib import Path

import click

from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.rabbitmq_admin import (
    DEFAULT_OWNER_TAG,
    ManagementAPIError,
    PlanError,
    RefusedError,
    TopologyError,
    apply_plan,
    load_users,
    make_plan,
    parse_topology,
)
from zocalo.rabbitmq_admin.endpoints import (
    ManagementAPIUnconfigured,
    NoManagementCredentials,
    NoManagementURL,
    management_endpoints,
)

#: What to give on this command line when the management API is not configured.
_ENDPOINT_HINTS: dict[type[ManagementAPIUnconfigured], str] = {
    NoManagementURL: "pass --api URL, or configure the rabbitmqapi plugin in the site "
    "configuration (-e ENV / --config)",
    NoManagementCredentials: "pass --user and --password with --api",
}


@click.command(
    name="zocalo.configure_rabbitmq",
    epilog="Exit status: 0 applied (or nothing to do, or --dry-run); 1 refused or failed.",
)
@click.argument("configuration", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--user-config",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of *.ini files ([rabbitmq] username, password, tags): create/update "
    "these users, and delete users carrying the owner tag that no file declares.",
)
@click.option("--dry-run", is_flag=True, help="Print the changes; make none.")
@click.option(
    "--force",
    is_flag=True,
    help="Also delete (or recreate) what is in use: queues with consumers or messages, "
    "their dead-letter queues, zocalo's delay topology; and vhosts.",
)
@click.option(
    "--skip-missing-plugins",
    is_flag=True,
    help="Leave out (with a warning) exchanges whose type needs a plugin the broker lacks.",
)
@click.option(
    "--vhost",
    metavar="NAME",
    help="Vhost for entries that name none (default: the rabbitmqapi plugin's vhost, else /).",
)
@click.option(
    "--owner-tag",
    default=DEFAULT_OWNER_TAG,
    show_default=True,
    help="Tag put on the vhosts and users this tool creates; only those are ever deleted.",
)
@click.option("--api", "api_url", metavar="URL", help="Management API, e.g. http://host:15672/api")
@click.option("--user", help="Management API user (default: the rabbitmqapi plugin's).")
@click.option("--password", help="Management API password (default: the rabbitmqapi plugin's).")
@site_config_options
def main(
    configuration: Path,
    user_config: Path | None,
    dry_run: bool,
    force: bool,
    skip_missing_plugins: bool,
    vhost: str | None,
    owner_tag: str,
    api_url: str | None,
    user: str | None,
    password: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Make the broker match CONFIGURATION (python-zocalo's RabbitMQ YAML format)."""
    plugin = site_config.plugins.get("rabbitmqapi")
    if vhost is None:
        vhost = plugin.vhost if plugin is not None else "/"
    try:
        desired = parse_topology(configuration, default_vhost=vhost)
        if user_config is not None:
            desired.users = load_users(user_config)
    except TopologyError as error:
        raise click.ClickException(str(error)) from None
    try:
        api = management_endpoints(api_url, user, password, plugin).connect()
    except ManagementAPIUnconfigured as error:
        hint = _ENDPOINT_HINTS.get(type(error))
        raise click.UsageError(f"{error}: {hint}" if hint else str(error)) from None
    except ManagementAPIError as error:
        raise click.ClickException(str(error)) from None
    try:
        plan = make_plan(
            api,
            desired,
            skip_missing_plugins=skip_missing_plugins,
            owner_tag=owner_tag,
            force=force,
        )
        for warning in plan.warnings:
            click.echo(f"Warning: {warning}", err=True)
        click.echo(plan.render())
        if dry_run and plan.changes:
            click.echo("Dry run: nothing was changed.")
        if dry_run or not plan.changes:
            return
        applied = apply_plan(
            api, plan, force=force, report=lambda line: click.echo(f"done: {line}")
        )
        click.echo(f"Applied {applied} change(s).")
    except (PlanError, RefusedError, ManagementAPIError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        api.close()
