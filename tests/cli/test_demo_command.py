"""zocalo demo: its flags reach the mini-facility, it prints the results table and a
sqlite3 command that shows the database, and it fails when work is lost."""

from __future__ import annotations

import dataclasses
import re
import shlex
import sqlite3
import uuid

from click.testing import CliRunner

from zocalo.cli import demo as demo_module
from zocalo.demo import run_demo


def run(*arguments: str, exit_code: int = 0) -> str:
    result = CliRunner().invoke(demo_module.command, list(arguments), catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return result.output


def row(output: str, name: str) -> str:
    """The value of one row of the results table."""
    match = re.search(rf"│ {re.escape(name)}\s*│ (.*?)\s*│", output)
    assert match, f"no row {name!r} in:\n{output}"
    return match.group(1)


def test_the_demo_prints_its_results_and_a_sqlite3_command_that_shows_them():
    output = run(
        "--collections", "2", "--images", "3", "--workers", "1",
        "--transport", f"memory://demo-{uuid.uuid4().hex}",
    )  # fmt: skip
    assert row(output, "collections") == "2 / 2 in the database"
    assert row(output, "images") == "6 taken (3 per collection), 6 recorded"
    assert row(output, "spot finders") == "1"
    assert row(output, "broker") == "in-memory, services on threads"
    assert (row(output, "dead letters"), row(output, "duplicates"), row(output, "lost")) == (
        "0",
        "0",
        "0",
    )
    assert row(output, "integrated").startswith("2 (a wrapped job each")
    stages = ("dispatch", "spot finding", "join", "integration", "database", "reply", "end to end")
    for stage in stages:
        assert re.search(rf"│ {stage}\s*│\s*\d+ ms │\s*\d+ ms │", output), stage
    assert re.search(r"finished in [0-9.]+ s \(under 30 s\)", output)
    assert "nothing lost, nothing dead-lettered, nothing done twice" in output

    command = shlex.split(output.split("look at it with:\n", 1)[1].splitlines()[0])
    assert command[:3] == ["sqlite3", "-header", "-column"]
    database, query = command[3:]
    with sqlite3.connect(database) as db:
        shown = db.execute(query).fetchall()
    assert [(dcid, images, complete) for dcid, _, images, _, _, complete in shown] == [
        (1001, 3, 1),
        (1002, 3, 1),
    ]


def test_by_default_the_services_run_as_processes_on_a_fresh_embedded_broker():
    output = run("--collections", "1", "--images", "2", "--workers", "2")
    assert row(output, "broker") == "a fresh embedded SQLite broker, one process per service"
    assert row(output, "collections") == "1 / 1 in the database"


def test_a_lost_image_makes_the_demo_exit_non_zero(monkeypatch):
    def with_a_lossy_spot_finder(settings, board):
        lossy = {"demo.FindSpots": "demo_faults:LosesImageTwo"}
        return run_demo(dataclasses.replace(settings, replace=lossy, join_timeout=1.0), board)

    monkeypatch.setattr(demo_module, "run_demo", with_a_lossy_spot_finder)
    output = run(
        "--collections", "2", "--images", "3", "--transport", f"memory://demo-{uuid.uuid4().hex}",
        exit_code=1,
    )  # fmt: skip
    assert row(output, "lost") == "2"
    assert "2 images lost, 0 dead letters, 0 duplicates" in output


def test_a_broker_that_cannot_be_used_is_one_line():
    result = CliRunner().invoke(demo_module.command, ["--transport", "nosuch://x"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: unknown transport scheme 'nosuch'"), result.output
    assert "Traceback" not in result.output
