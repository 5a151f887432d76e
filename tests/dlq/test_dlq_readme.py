"""The README's "When things fail" runs as written: its flaky service dead-letters image 13
and lets 12 and 14 through; dlq_check, dlq_purge and dlq_reinject say what it shows."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from zocalo.cli.dlq_check import command as dlq_check
from zocalo.cli.dlq_purge import command as dlq_purge
from zocalo.cli.dlq_reinject import command as dlq_reinject
from zocalo.cli.go import command as go
from zocalo.service import RunnerSettings, ServiceRunner
from zocalo.transport import create_transport

README = Path(__file__).parents[2] / "README.md"
RECIPE = """{"1": {"queue": "spots", "output": 2},
 "2": {"queue": "spots.results"},
 "start": [[1, {"image": "{image}"}]]}"""


def readme_block(first_line: str) -> str:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)
    for block in blocks:
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no block starting {first_line!r}")


def test_the_readme_dead_letter_round_trip(
    sqlite_broker, run, tmp_path, make_broker, monkeypatch, collector, wait_until
):
    namespace: dict = {}
    exec(readme_block("# flaky.py"), namespace)  # the README's own service
    shown = readme_block("$ zocalo.service -s flaky:FindSpots &").splitlines()
    (tmp_path / "spots.json").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    broker = make_broker(sqlite_broker)
    results = collector(ack_with=broker.client)
    broker.client.subscribe("spots.results", results)
    runner = ServiceRunner(
        namespace["FindSpots"](), create_transport(sqlite_broker), RunnerSettings(retry_delay=0.01)
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        for image in ("12", "13", "14"):
            started = run(
                go, "-f", "spots.json", "-s", f"image={image}", "--direct", "-t", sqlite_broker
            )
            assert started.exit_code == 0, started.output
        results.wait_for_count(2)
        wait_until(lambda: runner.stats.dead_lettered == 1, "image 13 dead-lettered")
        checked = run(dlq_check, "-t", sqlite_broker)
        assert checked.exit_code == 1
        assert checked.stdout.splitlines() == [shown[3]]
        assert checked.stderr.splitlines() == [shown[4].split("  ")[0]]
        purged = run(dlq_purge, "-t", sqlite_broker)
        lines = purged.stdout.splitlines()
        assert lines[:2] == shown[6:8] and lines[-1] == "Done."
        assert lines[3].strip().startswith("DLQ/") and Path(lines[3].strip()).exists()
        back = run(dlq_reinject, "-t", sqlite_broker, "--remove", input=purged.stdout)
        assert back.stdout.splitlines()[0] == "1 filenames read from stdin"
        assert not Path(lines[3].strip()).exists()
    finally:
        runner.request_stop()
        thread.join(30)
    assert sorted(json.loads(d.body)["payload"]["image"] for d in results.deliveries) == [
        "12",
        "14",
    ]
