"""The front door, end to end, as an operator runs it: ``zocalo.go -r spots ...`` -> Dispatcher
(the site's filter and readiness check installed) -> find spots -> JSONLines, each service
a real ``zocalo.service`` process on the site configuration."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from zocalo.cli.go import command as go
from zocalo.examples.demo_services import count_spots


def test_a_named_recipe_runs_from_zocalo_go_to_a_results_file(
    shared_url, site, service_processes, wait_until
):
    services = service_processes(shared_url, "Dispatcher", "demo.FindSpots", "JSONLines")
    # Not ready at the first check: the request goes round once more, 2 s later.
    settings = ["-s", "image=7", "-s", f"results={site.results}", "-s", "ready_after=2"]
    result = CliRunner().invoke(
        go, ["-r", "spots", *settings, "1234", "--transport", shared_url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    recipe_id = result.output.split("submitted recipe ", 1)[1].split()[0]
    results = site.results / f"{recipe_id}.jsonl"
    wait_until(
        lambda: results.exists() and results.read_text().endswith("\n"),
        f"a line in {results}",  # the file is created a moment before its line is written
        timeout=30,
    )
    assert json.loads(results.read_text()) == {"image": "7", "spots": count_spots(7)}

    logged = (site.logbook / time.strftime("%Y-%m") / recipe_id[:2] / recipe_id[2:]).read_text()
    parameters = json.loads(logged.split("Parsed message body:\n", 1)[1].split("\n\n")[0])[
        "parameters"
    ]
    assert parameters["guid"] == recipe_id
    assert parameters["readiness_checks"] == 2, "the readiness check held it back once"
    assert parameters["looked_up"] == "sample-of-1234", "the filter looked it up"

    services.stop()
    assert services.stats["Dispatcher"]["handled"] == 2  # held back once, then started
    assert services.stats["JSONLines"]["handled"] == 1
    assert all(stats["dead_lettered"] == 0 for stats in services.stats.values())
