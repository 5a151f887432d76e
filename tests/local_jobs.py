"""Helpers for tests of the local job backend: its jobs run in sessions of their own,
outside the test's process group, so a test stops them itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path


def kill_local_jobs(folder: Path) -> None:
    """SIGKILL every job (runner and script process groups) under the backend's ``folder``."""
    for job in folder.glob("*/job.json"):
        for pid in job_groups(job.parent):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def job_groups(job: Path) -> list[int]:
    """The process groups of the local job in folder ``job``: its script's, its runner's."""
    groups = []
    for name in ("script.json", "runner.json"):
        try:
            pid = json.loads((job / name).read_text()).get("pid")
        except (OSError, ValueError):
            continue
        if isinstance(pid, int):
            groups.append(pid)
    return groups


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, ended but not yet reaped by
    whoever inherited them, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False
