"""The supervisor stays small: what its interpreter imports leaves out everything heavy.

A facility runs about a hundred services, each with a supervisor resident for
its lifetime; whatever the supervisor imports, every one of them holds (and its
forked worker shares, until it touches the pages). The runner, the broker
clients, the CLI and the monitor belong in the worker or the tools. This runs
the supervisor's real entry import in a fresh interpreter, started as
``exec_supervisor`` starts it; ``test_supervisor.py`` (slow) checks a running
one's shared libraries.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from zocalo.service.supervisor import ENTRY_IMPORT

#: Top-level modules a supervisor must not load: broker clients, the CLI, the
#: site configuration's schema and parsers, the monitor's, HTTP; and standard
#: library modules that bring a shared library or an event loop of their own.
FORBIDDEN = frozenset(
    {
        "pika",
        "stomp",
        "click",
        "rich",
        "prometheus_client",
        "pydantic",
        "pydantic_core",
        "sqlalchemy",
        "yaml",
        "requests",
        "urllib3",
        "platformdirs",
        "sqlite3",
        "_sqlite3",
        "ssl",
        "_ssl",
        "asyncio",
        "concurrent",
    }
)
#: Zocalo's own parts a supervisor must not load (the worker and the tools do).
FORBIDDEN_ZOCALO = (
    "zocalo.cli",
    "zocalo.config",
    "zocalo.monitor",
    "zocalo.rabbitmq_admin",
    "zocalo.recipe",
    "zocalo.transport",
    "zocalo.service.base",
    "zocalo.service.discovery",
    "zocalo.service.runner",
    "zocalo.service.worker",
)


@pytest.fixture(scope="module")
def loaded() -> set[str]:
    """Every module the supervisor's entry import adds to a fresh interpreter
    (``-P`` as exec'd: not what ``site`` loaded before it)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{ENTRY_IMPORT}\n"
        "print(*sorted(set(sys.modules) - before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


def test_the_supervisor_loads_nothing_heavy(loaded: set[str]) -> None:
    top_level = {name.partition(".")[0] for name in loaded}
    assert not top_level & FORBIDDEN, sorted(top_level & FORBIDDEN)
    ours = sorted(name for name in loaded if name.startswith(FORBIDDEN_ZOCALO))
    assert not ours, ours


def test_the_supervisor_loads_nothing_outside_the_standard_library(loaded: set[str]) -> None:
    top_level = {name.partition(".")[0] for name in loaded}
    assert top_level - sys.stdlib_module_names == {"zocalo"}
