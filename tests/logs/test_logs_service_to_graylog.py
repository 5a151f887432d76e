"""End to end: a supervised service, configured by a site file, logs to Graylog."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.transport import create_transport

pytestmark = pytest.mark.slow


def test_handler_lines_reach_graylog_with_the_recipe_id(tmp_path: Path, gelf_listener):
    site = tmp_path / "site.yaml"
    site.write_text(
        "version: 1\n"
        "graylog:\n"
        f"  plugin: graylog\n  protocol: {gelf_listener.protocol}\n"
        f"  host: 127.0.0.1\n  port: {gelf_listener.port}\n"
        "environments:\n  live: [graylog]\n"
    )
    url = f"sqlite:///{tmp_path}/broker.db"
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "demo.FindSpots",
            "--transport",
            url,
            "--config",
            str(site),
            "-e",
            "live",
            "-v",
        ],
        start_new_session=True,
    )
    try:
        gelf_listener.wait_for(lambda m: "started" in m.get("short_message", ""), timeout=30)
        recipe = Recipe({"1": {"queue": "demo.find_spots"}, "start": [[1, {"image": 3}]]})
        with create_transport(url) as transport:
            step = RecipeStep()
            recipe_id = step.start(recipe)
            transport.publish(step.outputs).result(10)
        line = gelf_listener.wait_for(lambda m: m.get("_recipe_ID") == recipe_id, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGTERM)
        service.wait(30)
    assert line["_recipe_step"] == 1
    assert "spots" in line["short_message"]
    assert line["_service"] == "demo.FindSpots"
