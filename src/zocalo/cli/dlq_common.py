"""Options and plumbing shared by the dead-letter and queue tools."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from zocalo.cli.common import broker_errors, fail
from zocalo.config import SiteConfiguration
from zocalo.dlq.listing import QueueListing, is_rabbitmq, queue_listing
from zocalo.dlq.record import RECORD_NAME, DeadLetterRecord, default_location
from zocalo.errors import AdminError
from zocalo.transport import create_transport
from zocalo.transport.base import Transport

#: python-zocalo's tools take ``-?`` for help too.
HELP_OPTIONS = {"help_option_names": ["-h", "--help", "-?"]}
#: Where python-zocalo keeps purged dead letters: a storage key, else ./DLQ.
PURGE_LOCATION_KEY = "zocalo.dlq.purge_location"
DEFAULT_PURGE_LOCATION = "./DLQ"

management_url_option = click.option(
    "--management-url",
    metavar="URL",
    help="RabbitMQ management API, e.g. http://user:pass@host:15672 (default: the "
    "rabbitmqapi plugin's, else the AMQP host on port 15672, or 15671 for amqps).",
)


def purge_location(site_config: SiteConfiguration, given: str | None) -> Path:
    """``--location``, else the site configuration's ``zocalo.dlq.purge_location``, else
    ``./DLQ`` (python-zocalo's rule)."""
    return Path(given or site_config.storage.get(PURGE_LOCATION_KEY) or DEFAULT_PURGE_LOCATION)


@contextlib.contextmanager
def listing_for(
    url: str,
    transport: Transport | None,
    management_url: str | None,
    site_config: SiteConfiguration,
    namespace: str | None = None,
) -> Iterator[QueueListing]:
    """The queue listing of ``url``'s broker; a management API that cannot be reached
    (or refuses us) is one line naming it, with the option that picks another."""
    if transport is None and is_rabbitmq(url):
        with broker_errors():
            create_transport(url)  # the URL and its options are checked as everywhere
    try:
        listing = queue_listing(
            url,
            transport,
            management_url=management_url,
            rabbitmq_api=site_config.plugins.get("rabbitmqapi"),
            namespace=namespace,
        )
    except (AdminError, ValueError) as error:
        fail(str(error))
    try:
        yield listing
    except AdminError as error:
        hint = " (another with --management-url)" if is_rabbitmq(url) else ""
        fail(f"{error}{hint}")
    finally:
        listing.close()


def record_location(given: str | None, site_config: SiteConfiguration) -> Path:
    """Where Schlockmeister keeps dead letters and their record (see ``default_location``)."""
    return Path(given) if given else default_location(site_config.storage)


def open_record(given: str | None, site_config: SiteConfiguration) -> DeadLetterRecord:
    """The record Schlockmeister keeps, or one line saying there is none."""
    directory = record_location(given, site_config)
    if not (directory / RECORD_NAME).exists():
        fail(
            f"no dead letters recorded in {directory} (no {RECORD_NAME}: is Schlockmeister "
            "running, with this location? another with --location)"
        )
    return DeadLetterRecord(directory)


def group_files(record: DeadLetterRecord, group_id: int) -> list[Path]:
    """The waiting dead letters of group ``group_id``, or one line if there is no such group."""
    if record.group(group_id) is None:
        fail(f"no group {group_id} in {record.path} (zocalo dlq list shows the groups)")
    return record.waiting_files(group_id)
