"""The README's tour runs as written: its service, from the working directory, on its recipe."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

from zocalo.transport import create_transport

README = Path(__file__).parent.parent / "README.md"


def fenced_block(language: str, first_line: str) -> str:
    """The README's ```language block whose text starts with ``first_line``."""
    for block in re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no {language} block starting {first_line!r}")


def test_the_readme_service_runs_from_the_working_directory_on_the_readme_recipe(
    tmp_path, collector
):
    (tmp_path / "myservices.py").write_text(fenced_block("python", "# myservices.py"))
    (tmp_path / "recipe.json").write_text(fenced_block("json", '{\n  "1"'))
    url = f"sqlite:///{tmp_path}/broker.db"
    # No PYTHONPATH: the module is found only because it is in the working directory.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    zocalo_bin = Path(sys.executable).parent
    with create_transport(url) as client:
        sink = collector(ack_with=client)
        client.subscribe("record", sink)
        service = subprocess.Popen(
            [zocalo_bin / "zocalo.service", "-s", "myservices:CountSpots", "--transport", url],
            cwd=tmp_path,
            env=environment,
            start_new_session=True,
        )
        try:
            started = subprocess.run(
                [zocalo_bin / "zocalo.go", "-f", "recipe.json", "-s", "image=7",
                 "-s", "threshold=0.5", "--direct", "--transport", url],
                cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert started.returncode == 0, started.stderr
            (delivery,) = sink.wait_for_count(1, timeout=30)
        finally:
            os.killpg(service.pid, signal.SIGKILL)  # the service and its worker
            service.wait(10)
    assert json.loads(delivery.body)["payload"] == {"image": "7", "spots": 42}


def test_from_detector_to_database_walks_through_the_recipe_the_demo_runs():
    shown = fenced_block("json", '{\n  "1": {\n    "service": "Images of the data collection"')
    shipped = resources.files("zocalo.examples").joinpath("recipes/mini-facility.json")
    assert json.loads(shown) == json.loads(shipped.read_text())
