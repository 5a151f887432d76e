"""The Dispatcher's logbook: one text file per request, in python-zocalo's layout.

With the site configuration's ``storage`` key ``zocalo.dispatcher.logbook_location``
set, every request the Dispatcher starts is written to
``<location>/<YYYY-MM>/<ID[:2]>/<ID[2:]>`` (the recipe ID kept to ``[A-Za-z0-9-]``),
with four sections, each sorted, indented JSON: the incoming headers, the
incoming request, the request after the filters (with the parameters they
produced, where the reference keeps the incoming ones), and the recipe started. Sites
read these files with their own tools, so the layout is the reference's.
A logbook that cannot be written never stops a request: it is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The ``storage`` key naming the logbook directory (python-zocalo's).
LOGBOOK_KEY = "zocalo.dispatcher.logbook_location"

log = logging.getLogger("zocalo.services.dispatcher")

_NOT_IN_A_FILE_NAME = re.compile(r"[^A-Za-z0-9-]+")


def _string_keys(value: Any) -> Any:
    """``value`` with every dict key a string (``json`` would refuse mixed key types)."""
    if isinstance(value, list | tuple):
        return [_string_keys(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _string_keys(item) for key, item in value.items()}
    return value


def _section_json(value: Any) -> str:
    return json.dumps(
        _string_keys(value), sort_keys=True, default=str, indent=2, separators=(",", ": ")
    )


class Logbook:
    """A writable logbook directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def from_storage(cls, storage: Mapping[str, Any]) -> Logbook | None:
        """The logbook the site configuration names, if it names one that can be written."""
        location = storage.get(LOGBOOK_KEY)
        if not location:
            log.info("logbook off: the site configuration has no storage key %s", LOGBOOK_KEY)
            return None
        directory = Path(location).expanduser()
        try:
            directory.mkdir(mode=0o775, parents=True, exist_ok=True)
        except OSError as error:
            log.error("logbook off: cannot create %s: %s", directory, error)
            return None
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            log.error("logbook off: cannot write to %s", directory)
            return None
        log.debug("logbook at %s", directory)
        return cls(directory)

    def path_for(self, recipe_id: str) -> Path | None:
        """Where the entry of ``recipe_id`` goes (None: an ID too short to file)."""
        clean = _NOT_IN_A_FILE_NAME.sub("", recipe_id)
        if len(clean) < 3:
            return None
        return self.directory / time.strftime("%Y-%m") / clean[:2] / clean[2:]

    def record(
        self,
        recipe_id: str,
        headers: Mapping[str, Any],
        request: Any,
        parsed: Mapping[str, Any],
        recipe: Mapping[str, Any],
    ) -> Path | None:
        """Write one entry; returns its path, or None if it was not written (logged)."""
        path = self.path_for(recipe_id)
        if path is None:
            log.warning("recipe ID %r is too short for a logbook file name: not logged", recipe_id)
            return None
        sections = {
            "Incoming message header": headers,
            "Incoming message body": request,
            "Parsed message body": parsed,
            "Recipe object": recipe,
        }
        text = "\n\n".join(f"{title}:\n{_section_json(value)}" for title, value in sections.items())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
        except OSError as error:
            log.warning("could not write the logbook entry %s: %s", path, error)
            return None
        log.debug("request logged in %s", path)
        return path
