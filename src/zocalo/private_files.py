"""Files that hold messages: private (``0600`` in ``0700`` directories) and durable.

A message on disk (a dead letter purged by ``zocalo.dlq_purge``, a request
``zocalo.go`` stored while the broker was away) may carry anything a facility sends,
so no other user may read it; and it must survive a crash once the tool says it is
stored, so it is fsynced, then linked to its name, then its directory fsynced.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

#: ``same(existing, new)``: whether a file already there holds the same thing.
SameContent = Callable[[bytes, bytes], bool]


def write_private(path: Path, data: bytes, *, same: SameContent | None = None) -> Path:
    """Create ``path`` (``0600``, its new directories ``0700``) holding ``data``, durably.

    Never overwrites: if ``path`` exists and ``same(existing, data)`` says it holds the
    same thing, it is returned as it is; otherwise ``-2``, ``-3``, ... is added to the
    name. The data is written to a temporary file that is fsynced and then linked to
    its name, so a reader never sees a partial file, and the directory is fsynced.
    """
    return _via_temporary(path, data, lambda temporary: _link_unused(temporary, path, data, same))


def replace_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (``0600``, new directories ``0700``), replacing what
    is there in one rename, durably: for a file written again on a redelivery (the
    recipe-wrapper file of a cluster job), where a reader sees the old file or the
    new one, never a mix."""

    def rename(temporary: Path) -> Path:
        os.replace(temporary, path)
        return path

    _via_temporary(path, data, rename)


def create_private_once(path: Path, data: bytes) -> bool:
    """Create ``path`` (``0600``) holding ``data`` whole, durably, unless it exists:
    whether this call created it (of two racing callers, exactly one does)."""

    def link(temporary: Path) -> Path:
        os.link(temporary, path)
        return path

    try:
        _via_temporary(path, data, link)
    except FileExistsError:
        return False
    return True


def _via_temporary(path: Path, data: bytes, publish: Callable[[Path], Path]) -> Path:
    """Write ``data`` to a private, fsynced temporary file beside ``path``, give it its
    name with ``publish`` (link or rename), then fsync the directory."""
    directory = path.parent
    make_private_directories(directory)
    temporary = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _write_all(descriptor, data)
        finally:
            os.close(descriptor)
        final = publish(temporary)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(directory)
    return final


def _write_all(descriptor: int, data: bytes) -> None:
    """Write ``data`` whole, ``0600`` whatever the umask, and fsync it."""
    os.fchmod(descriptor, 0o600)
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]
    os.fsync(descriptor)


def _link_unused(temporary: Path, path: Path, data: bytes, same: SameContent | None) -> Path:
    candidate, number = path, 1
    while True:
        try:
            os.link(temporary, candidate)
            return candidate
        except FileExistsError:
            if same is not None and same(read_bytes_or_empty(candidate), data):
                return candidate
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


def read_bytes_or_empty(path: Path) -> bytes:
    """What ``path`` holds, or nothing when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def make_private_directories(directory: Path) -> None:
    """Create ``directory`` and its missing parents ``0700``; existing ones stay as they are."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o700)
        except FileExistsError:
            continue
        os.chmod(new, 0o700)  # the umask may have taken bits away; never adds any


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
