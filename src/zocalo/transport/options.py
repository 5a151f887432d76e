"""Transport URL options (``?name=value``): each transport declares its own, one parser reads them.

A transport lists its options as :class:`Option` values (name, type, default, allowed
range or values) and calls :func:`parse_options` once. The URL is refused, in one line
with its password hidden, when an option is unknown, given twice, of the wrong type or
out of range: a typo never silently becomes a default, and a value such as a negative
lease never reaches the broker code. An empty value (``?cafile=``) means the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from zocalo.errors import InvalidURL
from zocalo.transport.registry import redact_url

_KIND_NAMES: dict[Any, str] = {int: "a whole number", float: "a number", str: "text"}


def existing_file(text: str) -> str:
    """An option type: the path of a file that exists (named in the error if not)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"names no file: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"names a file this user cannot read: {path}")
    return str(path)


@dataclass(frozen=True)
class Option:
    """One URL option a transport understands.

    ``kind`` turns the text into a value: ``int``, ``float``, ``str`` or a function
    raising ValueError with a reason. Bounds are inclusive (``at_least``, ``at_most``)
    or strict (``above``); ``choices`` lists the accepted texts (case-insensitive).
    """

    name: str
    kind: Callable[[str], Any]
    default: Any = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    choices: tuple[str, ...] = ()

    def convert(self, value: Any) -> Any:
        """``value`` (URL text or a keyword argument) checked and typed; ValueError if not."""
        if isinstance(value, str):
            if self.choices:
                value = value.strip().lower()
            else:
                try:
                    value = self.kind(value.strip())
                except ValueError as error:
                    name = _KIND_NAMES.get(self.kind)
                    raise ValueError(f"is not {name}" if name else str(error)) from None
        elif self.kind in (int, float) and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise ValueError(f"is not {_KIND_NAMES[self.kind]}")
        elif self.kind is int and not float(value).is_integer():
            raise ValueError("is not a whole number")
        else:
            value = self.kind(value)
        self._check_range(value)
        return value

    def _check_range(self, value: Any) -> None:
        if self.choices and value not in self.choices:
            raise ValueError(f"is not one of {', '.join(self.choices)}")
        if not isinstance(value, int | float):
            return
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        # Written as "not (ok)" so that NaN, which compares false, is refused too.
        if self.at_least is not None and not value >= self.at_least:
            raise ValueError(f"must be at least {self.at_least:g}")
        if self.above is not None and not value > self.above:
            raise ValueError(f"must be greater than {self.above:g}")
        if self.at_most is not None and not value <= self.at_most:
            raise ValueError(f"must be at most {self.at_most:g}")


def split_url(url: str) -> SplitResult:
    """``urlsplit(url)``, with a malformed host or port refused as InvalidURL (password hidden)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise InvalidURL(f"transport URL {redact_url(url)} is malformed: {error}") from None
    return parts


def parse_options(
    url: str, declared: Sequence[Option], given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every declared option's value for ``url``: from its query, else ``given``, else default.

    An empty value (``?cafile=``) means the default. ``given`` holds keyword arguments
    of the transport's constructor (None: not given); they win over the URL and are
    checked the same way, but refused as ValueError (a programming error, not a URL).
    """
    options = {option.name: option for option in declared}
    seen: dict[str, str] = {}
    for name, text in parse_qsl(split_url(url).query, keep_blank_values=True):
        if name not in options:
            known = ", ".join(sorted(options)) or "none"
            raise InvalidURL(
                f"unknown option {name!r} in transport URL {redact_url(url)}; known: {known}"
            )
        if name in seen:
            raise InvalidURL(f"option {name!r} is given twice in transport URL {redact_url(url)}")
        seen[name] = text
    values: dict[str, Any] = {}
    for name, option in options.items():
        keyword = (given or {}).get(name)
        if keyword is not None:
            try:
                values[name] = option.convert(keyword)
            except ValueError as error:
                raise ValueError(f"{name}={keyword!r} {error}") from None
        elif seen.get(name, "").strip():
            try:
                values[name] = option.convert(seen[name])
            except ValueError as error:
                raise InvalidURL(
                    f"transport URL {redact_url(url)}: option {name}={seen[name]!r} {error}"
                ) from None
        else:
            values[name] = option.default
    return values


def cluster_node(url: str, node: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of one ``?hosts=`` entry of ``url``
    (every transport that takes a list of nodes reads it so)."""
    try:
        parts = urlsplit(f"//{node}")
        host, port = parts.hostname, parts.port
    except ValueError as error:
        host, port, why = None, None, str(error)
    else:
        why = "no host name"
    if not host or parts.username is not None or parts.path:
        raise InvalidURL(
            f"transport URL {redact_url(url)}: option hosts: {node!r} is not host[:port] ({why})"
        )
    return host, port or default_port
