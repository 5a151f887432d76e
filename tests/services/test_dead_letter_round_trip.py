"""The whole round trip on the embedded broker, on RabbitMQ and on ActiveMQ: a poison job
dead-letters (after the runner's retries, or after the broker's delivery limit when it kills its
worker) while good jobs keep flowing; Schlockmeister shows one group; its files are
edited and reinjected (also at another step) and the jobs succeed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fragile_services import Find, Record

from zocalo.cli.dlq_list import command as dlq_list
from zocalo.cli.dlq_reinject import command as dlq_reinject
from zocalo.config import SiteConfiguration
from zocalo.recipe import Recipe, wire
from zocalo.services.schlockmeister import Schlockmeister
from zocalo.transport import create_transport
from zocalo.transport.dead_letters import entry_seconds

#: The chain's queues (fragile_services.Find and Record consume the first two).
QUEUES = {"find": "chain.find", "record": "chain.record", "results": "chain.results"}


def start_job(client, queues: dict[str, str], image: int, poison: bool = False) -> str:
    recipe = Recipe(
        {
            "1": {"queue": queues["find"], "output": 2},
            "2": {"queue": queues["record"], "output": 3},
            "3": {"queue": queues["results"]},
            "start": [[1, {}]],
        }
    )
    body = wire.encode(recipe, 1, [], {"ID": f"job-{image}"}, {"image": image, "poison": poison})
    client.send(queues["find"], body, headers={"workflows-recipe": True})
    return f"job-{image}"


def schlockmeister(url: str, location: Path) -> Schlockmeister:
    service = Schlockmeister(url, location=location, scan_interval=0.2)
    service.site_config = SiteConfiguration()
    return service


def listed(location: Path) -> list[dict]:
    result = CliRunner().invoke(dlq_list, ["--location", str(location), "--json"])
    return json.loads(result.stdout)["groups"]


def cure(path: Path) -> None:
    """What an operator does once the cause is fixed: here, edit the job itself."""
    content = json.loads(path.read_text())
    content["message"]["payload"]["poison"] = False
    path.write_text(json.dumps(content, indent=2, sort_keys=True))


def test_a_poison_job_goes_round_trip_while_good_jobs_flow(
    cross_process_broker, run_service, collector, wait_until, tmp_path
):
    url, queues, location = cross_process_broker, QUEUES, tmp_path / "DLQ"
    started = time.time()
    client = create_transport(url)
    client.connect()
    try:
        for queue in queues.values():
            client.declare_queue(queue)
        results = collector(ack_with=client)
        client.subscribe(queues["results"], results)
        keeper = schlockmeister(url, location)
        run_service(keeper, url)
        run_service(Find(), url)
        run_service(Record(), url, retry_delay=0.05)
        for image in range(1, 21):
            start_job(client, queues, image, poison=image in (13, 14))
        good = results.wait_for_count(18, timeout=60)
        assert sorted(wire.decode(d.body, d.headers, "").payload["image"] for d in good) == sorted(
            set(range(1, 21)) - {13, 14}
        )
        wait_until(lambda: keeper.kept == 2, "both poison jobs kept by Schlockmeister", 60)
        (group,) = listed(location)
        assert (group["queue"], group["step"], group["exception"], group["count"]) == (
            queues["record"],
            2,
            "RuntimeError",
            2,
        )
        assert group["pattern"] == "cannot record image <n>: detector mask missing"
        assert sorted(group["recipe_ids"]) == ["job-13", "job-14"]
        # The latest dead letter's history: each failed attempt, dated (ISO-8601 UTC).
        history = group["history"]
        assert len(history) == 3 and all("detector mask missing" in e["reason"] for e in history)
        stamps = [entry["at"] for entry in history]
        assert stamps == sorted(stamps) and all(stamp.endswith("Z") for stamp in stamps)
        assert all(started - 1 <= entry_seconds(e) <= time.time() + 1 for e in history)
        text = CliRunner().invoke(dlq_list, ["--location", str(location)]).stdout
        for stamp in stamps[:2]:  # the last is in the latest dead letter only
            assert f"    {stamp} RuntimeError: cannot record image" in text, text
        files = sorted(location.glob("*/msg-*"))
        by_image = {json.loads(p.read_text())["message"]["payload"]["image"]: p for p in files}
        for path in files:
            cure(path)
        again = CliRunner().invoke(dlq_reinject, ["-t", url, "--remove", str(by_image[13])])
        assert again.exit_code == 0, again.output
        restarted = CliRunner().invoke(
            dlq_reinject, ["-t", url, "--remove", "--step", "1", str(by_image[14])]
        )
        assert restarted.exit_code == 0, restarted.output
        assert f"to queue '{queues['find']}'" in restarted.stdout
        done = results.wait_for_count(20, timeout=60)[18:]
        finished = {wire.decode(d.body, d.headers, "").environment["ID"] for d in done}
        assert finished == {"job-13", "job-14"}
        (after,) = listed(location)
        assert (after["count"], after["waiting"]) == (2, 0)
    finally:
        client.close()


@pytest.mark.slow
def test_a_job_that_kills_its_worker_is_dead_lettered_by_the_broker(
    cross_process_broker, run_service, collector, wait_until, tmp_path
):
    url, location = cross_process_broker, tmp_path / "DLQ"
    client = create_transport(url)
    client.connect()
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zocalo.cli.service",
            "-s",
            "fragile_services:Fragile",
            "-t",
            url,
            "--restart",
        ],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        for queue in ("fragile", "fragile.done"):
            client.declare_queue(queue)
        done = collector(ack_with=client)
        client.subscribe("fragile.done", done)
        keeper = schlockmeister(url, location)
        run_service(keeper, url)
        client.send("fragile", json.dumps("kill"))
        for n in range(3):
            client.send("fragile", json.dumps(n))
        assert sorted(json.loads(d.body) for d in done.wait_for_count(3, timeout=90)) == [0, 1, 2]
        wait_until(lambda: keeper.kept == 1, "the killer dead-lettered and kept", 90)
        (group,) = listed(location)
        assert group["queue"] == "fragile" and group["exception"] == ""
        assert "delivered" in group["example"] or "delivery_limit" in group["example"]
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(10)
        client.close()
