"""JSONLines that never flushes on idle: a partial batch stays kept for as long as a test
needs (written only when full, or at stop). Run as ``zocalo.service -s
lazy_jsonlines:LazyJSONLines`` by the process tests (this directory is on their path)."""

from __future__ import annotations

from zocalo.services.jsonlines import JSONLines


class LazyJSONLines(JSONLines):
    flush_idle = 3600.0


class HurriedJSONLines(LazyJSONLines):
    """Never idle, but no line may wait: every message after the first writes the batch."""

    max_wait = 0.0
