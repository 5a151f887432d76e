"""Read one site-configuration file into YAML that remembers its lines.

Every file the loader reads (the main file, an include, a section kept in a file
of its own) goes through :func:`read_yaml`, so a file that cannot be read is
reported the same way everywhere: by the file that named it and that line, when
another file did. PyYAML loads only here, when a file is actually read: every
service's supervisor imports the loader whether or not a site file exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zocalo.errors import ConfigurationError


def read_yaml(
    path: Path, what: str, *, referrer: str | None = None, line: int | None = None
) -> Any:
    """The YAML document in ``path`` (``what`` it is, for the error); ``referrer`` and
    ``line``: the file and line that named ``path``, if another file did."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        if referrer is not None:
            raise ConfigurationError(
                f"{what}: cannot read {path}: {reason}", file=referrer, line=line
            ) from None
        raise ConfigurationError(f"cannot read {what}: {reason}", file=path) from None
    from zocalo.config.yaml_lines import parse

    return parse(text, str(path))
