"""The demo facility's Dispatcher filter: a data collection ID in, its images' whereabouts out.

A facility looks its database up once, at the door, so that no step of a recipe
has to: this filter reads the ``data_collections`` row of the request's
``ispyb_dcid`` and adds what the recipe needs as parameters::

    ispyb_beamline, ispyb_image_directory, ispyb_image_template,
    ispyb_image_first, ispyb_image_last, ispyb_image_count,
    ispyb_processing_directory (``processing/dc<DCID>`` beside the images' folder)

It is registered under the entry point group ``zocalo.services.dispatcher.filters``
(see ``pyproject.toml``), so every Dispatcher of this installation runs it; it
does something only where ``$ZOCALO_DEMO_DATABASE`` names the facility database
(any SQLAlchemy URL; ``zocalo demo`` sets it for the Dispatcher it starts) and
the request has a data collection ID. A data collection that is not there
refuses the request (the Dispatcher dead-letters it, naming the filter).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zocalo.errors import InvalidMessage

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: Names the facility database; unset, the filter leaves every request as it is.
DATABASE_VARIABLE = "ZOCALO_DEMO_DATABASE"

_QUERY = (
    "SELECT beamline, directory, template, first_image, last_image "
    "FROM data_collections WHERE dcid = :dcid"
)


class UnknownCollection(InvalidMessage, LookupError):
    """The request's data collection is not in the facility database."""


@functools.lru_cache(maxsize=4)
def _engine(url: str) -> Engine:
    from zocalo.services.database import create_database_engine  # SQLAlchemy: on first use

    return create_database_engine(url)


def look_up_collection(
    message: dict[str, Any], parameters: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add the data collection's image parameters (see the module docstring)."""
    url = os.environ.get(DATABASE_VARIABLE)
    dcid = parameters.get("ispyb_dcid")
    if not url or dcid is None:
        return message, parameters
    from sqlalchemy import text

    engine = _engine(url)
    with engine.connect() as db:
        row = db.execute(text(_QUERY), {"dcid": int(dcid)}).first()
    if row is None:
        raise UnknownCollection(f"data collection {dcid} is not in the facility database")
    parameters.update(
        ispyb_beamline=row.beamline,
        ispyb_image_directory=row.directory,
        ispyb_image_template=row.template,
        ispyb_image_first=row.first_image,
        ispyb_image_last=row.last_image,
        ispyb_image_count=row.last_image - row.first_image + 1,
        ispyb_processing_directory=str(
            Path(row.directory).parent.parent / "processing" / f"dc{int(dcid)}"
        ),
    )
    return message, parameters
