"""zocalo.go: the Dispatcher request, --direct, --dry-run, and refusing memory://."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from zocalo.cli.go import command as go
from zocalo.transport import create_transport

RECIPE = {
    "1": {"queue": "go.first", "parameters": {"file": "{file}"}, "output": 2},
    "2": {"queue": "go.second"},
    "start": [[1, {"frame": "{$REPLACE:frames}"}]],
}


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(RECIPE))
    return path


def run(*args: str) -> object:
    return CliRunner().invoke(go, list(args), catch_exceptions=False)


def dry_run_sections(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


def test_dispatcher_request_as_python_zocalo_builds_it(recipe_file):
    result = run(
        "-r",
        "per-image",
        "-r",
        "summary",
        "-f",
        str(recipe_file),
        "-s",
        "a=b=c",
        "-s",
        "beamline=i03",
        "1234",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    printed = dry_run_sections(result.output)
    assert printed["destination"] == "queue processing_recipe"
    headers = json.loads(printed["headers"])
    assert headers["zocalo.go.user"] == getpass.getuser()
    assert "zocalo.go.host" in headers
    assert "workflows-recipe" not in headers
    body = json.loads(printed["body"])
    assert body["recipes"] == ["per-image", "summary"]
    assert body["parameters"] == {"a": "b=c", "beamline": "i03", "ispyb_dcid": 1234}
    assert body["custom_recipe"]["1"]["output"] == [2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one of -r, -f, -n, -p"),
        (("-r", "x"), "data collection id"),
        (("-s", "novalue", "-n"), "expected KEY=VALUE"),
        (("-n",), None),
    ],
)
def test_argument_rules(args, message):
    result = CliRunner().invoke(go, [*args, "--dry-run"])
    if message is None:
        assert result.exit_code == 0
        assert json.loads(dry_run_sections(result.output)["body"])["recipes"] == []
    else:
        assert result.exit_code == 2
        assert message in result.output


def test_reprocessing_id_and_autoprocscaling(recipe_file):
    result = run("-p", "55", "-a", "7", "--dry-run")
    body = json.loads(dry_run_sections(result.output)["body"])
    assert body["parameters"] == {"ispyb_process": 55, "ispyb_autoprocscalingid": 7}


def test_direct_start_runs_the_recipe_on_the_broker(recipe_file, tmp_path, collector):
    url = f"sqlite:///{tmp_path}/broker.db"
    result = run("-f", str(recipe_file), "--direct", "-s", "file=/data/x.cbf", "--transport", url)
    assert result.exit_code == 0, result.output
    assert "started recipe" in result.output
    with create_transport(url) as transport:
        sink = collector(ack_with=transport)
        transport.subscribe("go.first", sink)
        (delivery,) = sink.wait_for_count(1)
    body = json.loads(delivery.body)
    assert delivery.headers["workflows-recipe"] is True
    assert body["recipe"]["1"]["parameters"] == {"file": "/data/x.cbf"}
    assert body["payload"] == {"frame": None}, "an unknown $REPLACE becomes null"
    assert len(body["environment"]["ID"]) == 36


def test_memory_transport_is_refused_with_a_reason(recipe_file):
    result = CliRunner().invoke(
        go, ["-f", str(recipe_file), "--direct", "--transport", "memory://x"]
    )
    assert result.exit_code == 2
    assert "in-process broker" in result.output


def test_reference_transport_names_need_site_configuration(recipe_file):
    result = CliRunner().invoke(go, ["-n", "-t", "PikaTransport"])
    assert result.exit_code == 2
    assert "site configuration" in result.output


def test_invalid_recipe_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"queue": "x", "output": 9}, "start": [[1, {}]]}))
    result = CliRunner().invoke(go, ["-f", str(bad), "--direct", "--dry-run"])
    assert result.exit_code == 2
    assert "step 1" in result.output and "output" in result.output
