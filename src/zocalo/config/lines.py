"""Parsed YAML that remembers where it came from: the line of each mapping, key and item.

Apart from the parser (:mod:`zocalo.config.yaml_lines`, which builds them) so
that the loader's modules can name these types without loading PyYAML, and the parser
without importing the loader.
"""

from __future__ import annotations

from typing import Any


class _Map(dict):
    """A YAML mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class _Seq(list):
    """A YAML sequence that remembers the line of itself and of each item."""

    line: int = 0
    item_lines: list[int]


def plain(value: Any) -> Any:
    """A deep copy with plain dicts and lists, for models and for callers."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
