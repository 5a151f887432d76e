"""zocalo recipe validate|show|list."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from zocalo.cli.main import cli

RECIPE = {
    "1": {
        "service": "Find spots",
        "queue": "demo.find_spots",
        "output": {"spots": 2, "nothing": [3]},
        "error": 4,
    },
    "2": {"service": "Results", "queue": "jsonlines", "parameters": {"output_filename": "x"}},
    "3": {"topic": "transient.none", "transport-delay": 5},
    "4": {"queue": "mail"},
    "start": [[1, {"image": 7}]],
    "error": [4],
}


def run(*args: str) -> object:
    return CliRunner().invoke(cli, ["recipe", *args])


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A site configuration whose recipe library holds ``spots`` and ``beamline/i03``."""
    recipes = tmp_path / "recipes"
    (recipes / "beamline").mkdir(parents=True)
    (recipes / "spots.json").write_text(json.dumps(RECIPE))
    (recipes / "beamline" / "i03.json").write_text(json.dumps(RECIPE))
    config = tmp_path / "site.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            site-storage: {{plugin: storage, zocalo.recipe_directory: {recipes}}}
            environments: {{default: [site-storage]}}
            """
        )
    )
    return config


def test_validate_names_each_invalid_file_step_and_field(tmp_path: Path) -> None:
    good, loop, bad_queue = (tmp_path / name for name in ("good.json", "loop.json", "q.json"))
    good.write_text(json.dumps(RECIPE))
    loop.write_text(json.dumps({"1": {"queue": "a", "output": 1}, "start": [[1, {}]]}))
    bad_queue.write_text(json.dumps({"1": {"queue": 5}, "start": [[1, {}]]}))
    assert run("validate", str(good)).exit_code == 0
    result = run("validate", str(good), str(loop), str(bad_queue), str(tmp_path / "missing.json"))
    assert result.exit_code == 1
    problems = result.output.splitlines()
    assert len(problems) == 3
    assert problems[0].startswith(f"{loop}: Invalid recipe: ") and "step 1" in problems[0]
    assert problems[1].startswith(f"{bad_queue}: ") and "step 1 field 'queue'" in problems[1]
    assert problems[2].startswith(f"{tmp_path / 'missing.json'}: cannot be read")


def test_show_draws_channels_and_error_branches(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECIPE))
    text = run("show", str(path)).output
    assert "1: Find spots  [queue demo.find_spots]" in text
    assert "    output spots -> 2\n    output nothing -> 3\n    error -> 4" in text
    assert "3  [topic transient.none, delay 5 s]" in text and text.endswith("error -> 4\n")
    mermaid = run("show", "--format", "mermaid", str(path)).output
    assert mermaid.startswith("flowchart LR")
    assert 's1 -- "spots" --> s2' in mermaid and "s1 -. error .-> s4" in mermaid
    dot = run("show", "--format", "dot", str(path)).output
    assert dot.startswith("digraph recipe {") and dot.rstrip().endswith("}")
    assert 's1 -> s4 [label="error", style=dashed];' in dot


def test_show_refuses_an_invalid_recipe_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"1": {"queue": "a", "output": 9}, "start": [[1, {}]]}))
    result = run("show", str(path))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "links to step 9" in result.output


def test_list_and_show_read_the_sites_recipe_library(library: Path) -> None:
    listed = run("list", "--config", str(library))
    assert listed.output.splitlines() == ["beamline/i03", "spots"]
    shown = run("show", "beamline/i03", "--config", str(library))
    assert shown.exit_code == 0 and "1: Find spots" in shown.output


def test_list_without_a_library_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOCALO_CONFIG", raising=False)
    result = run("list")
    assert result.exit_code == 1 and "zocalo.recipe_directory" in result.output


def test_validate_reports_every_problem_one_line_each(tmp_path: Path) -> None:
    """Three problems in three steps: three lines, each naming the file, step and field."""
    path = tmp_path / "three.json"
    path.write_text(
        json.dumps(
            {
                "start": [[1, {}]],
                "1": {"queue": "a", "output": [2, 9]},
                "2": {"queue": 5, "output": 3},
                "3": {"queue": "c", "transport-delay": "soon"},
            }
        )
    )
    result = run("validate", str(path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 3, result.output
    assert all(line.startswith(f"{path}: Invalid recipe: step ") for line in lines)
    assert "step 1 field 'output' links to step 9" in lines[0]
    assert "step 2 field 'queue' must be a name" in lines[1]
    assert "step 3 field 'transport-delay'" in lines[2]


def test_validate_says_malformed_json_in_one_line_and_valid_files_pass(tmp_path: Path) -> None:
    broken, good = tmp_path / "broken.json", tmp_path / "good.json"
    broken.write_text('{"start": [[1, {}]], "1": {"queue": ')
    good.write_text(json.dumps(RECIPE))
    result = run("validate", str(good), str(broken))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        line for line in result.output.splitlines() if line.startswith(f"{broken}: ")
    ]
    assert len(result.output.splitlines()) == 1 and "not valid JSON" in result.output
    valid = run("validate", str(good))
    assert valid.exit_code == 0 and valid.output == "1 recipe valid\n"


@pytest.mark.parametrize("depth", [100_000, 600], ids=["beyond the decoder", "beyond the copy"])
def test_validate_says_a_too_deeply_nested_recipe_in_one_line(tmp_path: Path, depth: int) -> None:
    """JSON nested deeper than Python's recursion limit (in the parser, or in the copy a
    recipe makes of its input) is one line naming the file, not a RecursionError."""
    path = tmp_path / "deep.json"
    nested = '{"a": ' * depth + "2" + "}" * depth
    path.write_text(f'{{"start": [[1, {{}}]], "1": {{"queue": "q", "output": {nested}}}}}')
    result = run("validate", str(path))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"{path}: Invalid recipe: ")
    assert "nested too deeply" in result.output and len(result.output.splitlines()) == 1
