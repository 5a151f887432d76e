"""zocalo dlq: the dead-letter tools under one command (also installed as zocalo.dlq_*)."""

from __future__ import annotations

import click

from zocalo.cli import dlq_check, dlq_list, dlq_purge, dlq_reinject


@click.group("dlq")
def group() -> None:
    """Dead letters: check, purge to files, list the groups Schlockmeister keeps, reinject."""


group.add_command(dlq_check.command)
group.add_command(dlq_purge.command)
group.add_command(dlq_reinject.command)
group.add_command(dlq_list.command)
