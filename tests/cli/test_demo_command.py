"""zocalo demo: --in-process and --rate reach the demo and do what they say."""

from __future__ import annotations

import re

from click.testing import CliRunner

from zocalo.cli.demo import command as demo


def run_demo(*arguments: str) -> str:
    result = CliRunner().invoke(
        demo, ["--jobs", "3", "--images", "1", *arguments], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "nothing lost" in result.output
    return result.output


def submission_seconds(output: str) -> float:
    match = re.search(r"3 jobs in ([0-9.]+) s", output)
    assert match, output
    return float(match.group(1))


def test_in_process_runs_the_services_on_threads_on_the_memory_broker():
    output = run_demo("--in-process", "--rate", "100")
    assert "in-memory, services on threads" in output


def test_rate_spaces_the_submissions():
    # Three jobs at 4 per second: the third is submitted 0.5 s after the first, at the
    # earliest (the default of 20 per second would take 0.1 s).
    output = run_demo("--in-process", "--rate", "4")
    assert "(4/s)" in output
    assert submission_seconds(output) >= 0.5
