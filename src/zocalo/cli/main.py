"""The umbrella command: zocalo SUBCOMMAND."""

from __future__ import annotations

import click

from zocalo.cli import (
    cancel,
    demo,
    dlq,
    go,
    monitor,
    pickup,
    queue_drain,
    queues,
    recipe,
    service,
    shutdown,
    wrap,
)


@click.group()
@click.version_option(package_name="zocalo")
def cli() -> None:
    """Zocalo: messaging for automated scientific data processing."""


cli.add_command(service.command)
cli.add_command(go.command)
cli.add_command(demo.command)
cli.add_command(queues.command)
cli.add_command(shutdown.command)
cli.add_command(monitor.command)
cli.add_command(recipe.command)
cli.add_command(wrap.command)
cli.add_command(cancel.command)
cli.add_command(dlq.group)
cli.add_command(queue_drain.command)
cli.add_command(pickup.command)
