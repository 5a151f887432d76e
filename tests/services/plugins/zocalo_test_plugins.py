"""A facility's Dispatcher plugins, as a test stands them in: one filter, one readiness check.

Installed for a test by putting this directory on the path: the ``*.dist-info`` beside
this module registers them under python-zocalo's entry point groups, exactly as a
facility package's ``pyproject.toml`` would, so the Dispatcher finds them with
``importlib.metadata`` and nothing else. Each behaves as the request's parameters say.
"""

from __future__ import annotations

from typing import Any


def look_up(message: dict[str, Any], parameters: dict[str, Any]) -> tuple[dict, dict]:
    """Look something up once, at the door (a database would be asked here).

    ``parameters["looked_up"]`` is what it found; ``filter_fails`` makes the lookup
    fail; ``add_recipe`` names a recipe to run as well (a filter runs before the
    named recipes are loaded, so it may add to them).
    """
    if parameters.get("filter_fails"):
        raise RuntimeError("the sample database cannot be reached")
    parameters["looked_up"] = f"sample-of-{parameters.get('ispyb_dcid', 'nothing')}"
    if parameters.get("add_recipe"):
        message["recipes"] = [*message.get("recipes", []), parameters["add_recipe"]]
    return message, parameters


def ready_after_checks(message: dict[str, Any], parameters: dict[str, Any]) -> bool:
    """Ready at the ``ready_after``-th check (default the first), counted in the parameters,
    which travel with the request each time it is sent round again."""
    if parameters.get("readiness_fails"):
        raise OSError("the detector file system is not mounted")
    checks = int(parameters.get("readiness_checks", 0)) + 1
    parameters["readiness_checks"] = checks
    return checks >= int(parameters.get("ready_after", 1))
