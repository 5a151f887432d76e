"""PyYAML's safe loader, keeping the line of every mapping, key and list item.

Imported only when a site configuration file is read: most processes (every
service's supervisor and worker without a site file) never need PyYAML.
"""

from __future__ import annotations

from typing import Any

import yaml

from zocalo.config.lines import _Map, _Seq
from zocalo.errors import ConfigurationError


class _LineLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with line numbers kept and duplicate keys rejected."""

    source: str = "<string>"


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    merges = any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value)
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigurationError(
                "a mapping key must be a plain value", file=loader.source, line=line
            ) from None
        if key in result and not merges:
            raise ConfigurationError(
                f"key {key!r} appears twice (first on line {result.key_lines[key]})",
                file=loader.source,
                line=line,
                key=str(key),
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(item, deep=True) for item in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [item.start_mark.line + 1 for item in node.value]
    return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def parse(text: str, source: str) -> Any:
    """The YAML document in ``text``; errors name ``source`` and the line."""
    loader = _LineLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigurationError(
            f"not valid YAML: {error.problem or error.context}", file=source, line=line
        ) from None
    except yaml.YAMLError as error:
        raise ConfigurationError(f"not valid YAML: {error}", file=source) from None
    finally:
        loader.dispose()
