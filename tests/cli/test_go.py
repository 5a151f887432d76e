"""zocalo.go: the Dispatcher request and its recipe ID, --direct, --dry-run, the fallback
drop file, and refusing memory://."""

from __future__ import annotations

import getpass
import json
import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from zocalo import Service, handler
from zocalo.cli.go import command as go
from zocalo.launch import ServiceThreads
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
    guid = body["parameters"].pop("guid")
    assert str(uuid.UUID(guid)) == guid, "the recipe ID, a fresh uuid4"
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
    body["parameters"].pop("guid")
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


def site_with_fallback(tmp_path: Path) -> tuple[Path, Path]:
    """A site configuration naming a fallback location; (config file, location)."""
    fallback = tmp_path / "fallback"
    config = tmp_path / "site.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            site-storage:
              plugin: storage
              zocalo.go.fallback_location: {fallback}
            environments:
              default: [site-storage]
            """
        )
    )
    return config, fallback


def test_a_request_goes_to_the_dispatcher_queue_under_the_recipe_id_it_prints(tmp_path, collector):
    url = f"sqlite:///{tmp_path}/broker.db"
    result = run("-r", "spots", "-s", "image=7", "1234", "--transport", url)
    assert result.exit_code == 0, result.output
    recipe_id = result.output.split("submitted recipe ", 1)[1].split()[0]
    assert result.output.strip() == f"submitted recipe {recipe_id} to processing_recipe"
    with create_transport(url) as transport:
        sink = collector(ack_with=transport)
        transport.subscribe("processing_recipe", sink)
        (delivery,) = sink.wait_for_count(1)
    assert json.loads(delivery.body) == {
        "recipes": ["spots"],
        "parameters": {"image": "7", "ispyb_dcid": 1234, "guid": recipe_id},
    }
    assert delivery.headers["zocalo.go.user"] == getpass.getuser()
    assert "workflows-recipe" not in delivery.headers

    mine = run("-r", "spots", "-s", "guid=my-own-id", "-n", "--transport", url)
    assert mine.output.strip() == "submitted recipe my-own-id to processing_recipe"


def test_a_request_the_broker_cannot_take_is_stored_in_the_fallback_location(tmp_path):
    config, fallback = site_with_fallback(tmp_path)
    unreachable = "amqp://guest:guest@127.0.0.1:1/"
    result = CliRunner().invoke(
        go, ["-r", "spots", "5", "--config", str(config), "--transport", unreachable]
    )
    assert result.exit_code == 0, result.output
    assert "the broker did not take the request: " in result.stderr
    (stored,) = fallback.iterdir()
    content = json.loads(stored.read_text())
    assert stored.read_text() == json.dumps(content, indent=2) + "\n"
    assert list(content) == ["headers", "message"]
    assert content["headers"]["zocalo.go.user"] == getpass.getuser()
    recipe_id = content["message"]["parameters"]["guid"]
    assert content["message"] == {
        "recipes": ["spots"],
        "parameters": {"ispyb_dcid": 5, "guid": recipe_id},
    }
    assert f"stored recipe {recipe_id} in {stored}" in result.stdout
    assert "Traceback" not in result.output


def test_drop_stores_without_trying_the_broker_and_dry_run_stores_nothing(tmp_path):
    config, fallback = site_with_fallback(tmp_path)
    url = f"sqlite:///{tmp_path}/broker.db"
    dry = run("-r", "spots", "-n", "--drop", "--dry-run", "--config", str(config))
    assert "not storing the request in" in dry.output and not fallback.exists()
    dropped = run("-r", "spots", "-n", "--drop", "--config", str(config), "--transport", url)
    assert dropped.exit_code == 0, dropped.output
    assert len(list(fallback.iterdir())) == 1
    assert not (tmp_path / "broker.db").exists(), "the broker was never opened"
    refused = CliRunner().invoke(go, ["-r", "spots", "-n", "--drop"])
    assert refused.exit_code == 2 and "zocalo.go.fallback_location" in refused.output


def test_without_a_fallback_an_unreachable_broker_is_one_error_line():
    result = CliRunner().invoke(
        go, ["-r", "spots", "5", "--transport", "amqp://guest:guest@127.0.0.1:1/"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


class Squares(Service):
    """Replies with the square of each frame, twice over: two replies per message."""

    @handler("go.first")
    def square(self, step, payload):
        for copy in range(2):
            step.reply({"copy": copy, "square": int(payload["frame"]) ** 2})  # -s: a string


def test_wait_prints_each_reply_as_a_json_line_and_nothing_else_on_stdout(recipe_file, tmp_path):
    url = f"sqlite:///{tmp_path}/broker.db"
    with ServiceThreads([Squares()], url):
        result = run(
            "-f", str(recipe_file), "--direct", "-s", "frames=3", "--results", "2", "--wait=30",
            "--transport", url,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"copy": 0, "square": 9},
        {"copy": 1, "square": 9},
    ]
    (said,) = result.stderr.splitlines()
    assert said.endswith("sent to go.first; waiting up to 30 s for 2 replies")


def test_a_wait_that_times_out_is_one_error_line_and_exit_1(recipe_file, tmp_path):
    url = f"sqlite:///{tmp_path}/broker.db"
    result = run("-f", str(recipe_file), "--direct", "--results", "2", "--wait", "0.5", "-t", url)
    assert result.exit_code == 1
    started, error = result.stderr.splitlines()
    recipe_id = started.split()[1]
    assert error == f"Error: timed out: 0 of 2 replies for recipe {recipe_id} arrived within 0.5 s"
    assert result.stdout == "" and "Traceback" not in result.output


@pytest.mark.parametrize("other", ["--dry-run", "--drop"])
def test_wait_refuses_what_sends_nothing_now(recipe_file, other):
    result = CliRunner().invoke(go, ["-r", "spots", "-n", "--wait", other])
    assert result.exit_code == 2
    assert f"{other} sends nothing now: there are no replies to --wait for" in result.output
