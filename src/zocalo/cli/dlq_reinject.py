"""zocalo.dlq_reinject: send dead letters from files back to their queues (python-zocalo's
tool), through the exchange they originally came through.

Every file is checked before anything is sent; ``--remove`` deletes a file only once
the broker confirmed its message. Ours adds ``--step N``: restart the message's recipe
at step N.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from zocalo.cli.common import broker_errors, fail, open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.cli.dlq_common import HELP_OPTIONS, group_files, open_record
from zocalo.config import SiteConfiguration
from zocalo.dlq.listing import is_activemq, is_rabbitmq
from zocalo.dlq.reinject import Reinjection, activemq_names, prepare_files, reinject


def paths_from_purge_output(lines: list[str]) -> list[str]:
    """The file names in ``zocalo.dlq_purge``'s output: its indented lines other than the
    ``Message ... exported:`` ones (python-zocalo's tool took only lines starting with two
    spaces and a ``/``, which its purge no longer prints)."""
    return [
        line.strip()
        for line in lines
        if line.startswith("  ") and line.strip() and not line.strip().startswith("Message ")
    ]


def show(reinjection: Reinjection) -> None:
    for message in reinjection.messages:
        click.echo(f"{reinjection.path}: {message.describe()}")
        click.echo(f"  headers: {json.dumps(dict(message.headers), sort_keys=True)}")
        click.echo(f"  body: {message.body.decode('utf-8', 'replace')}")


@click.command("reinject", context_settings=HELP_OPTIONS)
@click.argument("files", nargs=-1, metavar="[FILE]...", type=click.Path(path_type=Path))
@click.option("-r", "--remove", is_flag=True, help="Delete each file once its message is sent.")
@click.option("-v", "--verbose", is_flag=True, help="Show each message before sending it.")
@click.option(
    "-d",
    "--destination",
    metavar="NAME",
    help="Send to this queue instead (/queue/NAME or /topic/NAME also accepted).",
)
@click.option(
    "-w",
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Wait this long between messages.",
)
@click.option(
    "--step",
    type=int,
    metavar="N",
    help="Restart the message's recipe at step N (its queue, unless -d names another).",
)
@click.option(
    "--group",
    "group_id",
    type=int,
    metavar="ID",
    help="Reinject the dead letters of this group (zocalo dlq list) not reinjected yet.",
)
@click.option(
    "--location",
    metavar="DIR",
    help="With --group: where Schlockmeister keeps dead letters (default: the site "
    "configuration's zocalo.dlq.purge_location, else DLQ in your data directory).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the broker to confirm each message.",
)
@transport_option
@site_config_options
def command(
    files: tuple[Path, ...],
    remove: bool,
    verbose: bool,
    destination: str | None,
    wait: float,
    step: int | None,
    group_id: int | None,
    location: str | None,
    timeout: float,
    transport: str | None,
    site_config: SiteConfiguration,
) -> None:
    """Send the dead letters in FILE... (or in zocalo.dlq_purge's output, piped in, or
    of a group with --group) back."""
    record = None
    paths: list[Path | str] = list(files)
    if group_id is not None:
        if paths:
            raise click.UsageError("give FILE... or --group, not both")
        record = open_record(location, site_config)
        paths = list(group_files(record, group_id))
        if not paths:
            click.echo(f"Group {group_id}: no dead letters waiting (all reinjected, or gone)")
            return
    elif not paths and not sys.stdin.isatty():
        paths = list(paths_from_purge_output(sys.stdin.read().splitlines()))
        click.echo(f"{len(paths)} filenames read from stdin")
    if not paths:
        raise click.UsageError("No DLQ message files given.")
    url = resolve_transport(transport, site_config)
    with broker_errors():
        stomp_name = activemq_names(url) if is_activemq(url) else None
        reinjections = prepare_files(
            paths,
            destination=destination,
            step=step,
            through_exchanges=is_rabbitmq(url),
            stomp_name=stomp_name,
        )
    if verbose:
        for reinjection in reinjections:
            show(reinjection)

    def sent(reinjection: Reinjection) -> None:
        if record is not None:
            record.mark_reinjected(reinjection.path)
        gone = " (file removed)" if remove else ""
        click.echo(f"Reinjected {reinjection.path} to {reinjection.describe()}{gone}")

    with open_broker(url) as broker:
        count = reinject(
            broker, reinjections, remove=remove, wait=wait, timeout=timeout, on_sent=sent
        )
    if not count:
        fail("nothing reinjected")
    click.echo("Done.")


def main() -> None:
    command(prog_name="zocalo.dlq_reinject")


if __name__ == "__main__":
    main()
