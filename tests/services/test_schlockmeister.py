"""Schlockmeister on every broker: each dead letter kept on disk and in the record, grouped
by how it failed, one alert per new group; zocalo dlq list and reinject --group on top."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from click.testing import CliRunner

from zocalo.cli.dlq_list import command as dlq_list
from zocalo.cli.dlq_reinject import command as dlq_reinject
from zocalo.config import SiteConfiguration
from zocalo.dlq.record import DeadLetterRecord
from zocalo.logs import RecipeContextFilter
from zocalo.recipe import Recipe, wire
from zocalo.services.schlockmeister import ALERT_TOPIC, MAIL_QUEUE, Schlockmeister
from zocalo.transport import Outgoing, create_transport, dlq_name
from zocalo.transport.dead_letters import dead_letter_marks


def job(queue: str, image: int) -> bytes:
    recipe = Recipe({"1": {"queue": "find"}, "2": {"queue": queue}, "start": [[1, {}]]})
    return wire.encode(recipe, 2, [1], {"ID": f"job-{image}"}, {"image": image})


def dead_letter(client, queue: str, body: bytes, reason: str) -> None:
    """``body`` dead-lettered from ``queue`` as the runner does it."""
    client.declare_queue(queue)
    headers = {
        "workflows-recipe": True,
        **dead_letter_marks(reason=reason, queue=queue, history=[reason]),
    }
    client.publish([Outgoing(dlq_name(queue), body, headers)]).result(30)


def schlockmeister(url: str, location: Path, **options) -> Schlockmeister:
    service = Schlockmeister(url, location=location, scan_interval=0.2, **options)
    service.site_config = SiteConfiguration()
    return service


def groups(location: Path) -> list:
    with DeadLetterRecord(location) as record:
        return record.groups()


def test_dead_letters_are_kept_grouped_and_alerted_once_per_group(
    wait_until, any_broker, run_service, collector, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="zocalo.service.Schlockmeister")
    caplog.handler.addFilter(RecipeContextFilter())  # as every zocalo log handler has
    spots, other = f"spots.{uuid.uuid4().hex[:6]}", f"other.{uuid.uuid4().hex[:6]}"
    location = tmp_path / "DLQ"
    client = create_transport(any_broker)
    client.connect()
    try:
        alerts = collector()
        client.subscribe_broadcast(ALERT_TOPIC, alerts)
        for image in (41, 42, 43):
            reason = f"FileNotFoundError: /data/cm1234/image_000{image}.cbf (after 3 attempts)"
            dead_letter(client, spots, job(spots, image), reason)
        dead_letter(client, other, b"not json", "ValueError: bad payload (after 3 attempts)")
        service = schlockmeister(any_broker, location)
        run_service(service, any_broker)
        wait_until(lambda: service.kept == 4, "four dead letters kept")
        found = {group.queue: group for group in groups(location)}
        assert set(found) == {spots, other}
        assert (found[spots].count, found[spots].step, found[spots].exception) == (
            3,
            2,
            "FileNotFoundError",
        )
        assert found[spots].pattern == "/data/cm<n>/image_<n>.cbf"
        assert found[spots].recipe_ids == ["job-41", "job-42", "job-43"]
        assert found[other].count == 1 and found[other].step is None
        assert len(list(location.glob("*/msg-*"))) == 4
        received = alerts.wait_for_count(2)
        assert {json.loads(a.body)["group"]["queue"] for a in received} == {spots, other}
        lines = [r for r in caplog.records if r.getMessage().startswith("dead letter: ")]
        assert len(lines) == 4
        first = json.loads(lines[0].getMessage().removeprefix("dead letter: "))
        assert {"queue", "step", "recipe_id", "reason", "group", "file"} <= set(first)
        assert {r.recipe_ID for r in lines} >= {"job-41", "job-42", "job-43"}
        new_group_lines = [r for r in caplog.records if "new kind of dead letter" in r.getMessage()]
        assert [r.levelno for r in new_group_lines] == [logging.ERROR, logging.ERROR]

        # Found later, in a queue watched already and one new: one more alert, for the new.
        late = f"late.{uuid.uuid4().hex[:6]}"
        reason = "FileNotFoundError: /data/cm1234/image_00099.cbf (after 3 attempts)"
        dead_letter(client, spots, job(spots, 99), reason)
        dead_letter(client, late, b"1", "RuntimeError: detector offline (after 3 attempts)")
        wait_until(lambda: service.kept == 6, "two more dead letters kept")
        assert len(alerts.wait_for_count(3)) == 3
        assert {g.queue: g.count for g in groups(location)} == {spots: 4, other: 1, late: 1}
    finally:
        client.close()


def test_a_restarted_schlockmeister_alerts_no_group_twice(
    wait_until, any_broker, run_service, collector, tmp_path
):
    queue, location = f"spots.{uuid.uuid4().hex[:6]}", tmp_path / "DLQ"
    client = create_transport(any_broker)
    client.connect()
    try:
        alerts = collector()
        client.subscribe_broadcast(ALERT_TOPIC, alerts)
        dead_letter(client, queue, job(queue, 1), "KeyError: 'beam' (after 3 attempts)")
        first = schlockmeister(any_broker, location)
        runner = run_service(first, any_broker)
        wait_until(lambda: first.kept == 1, "the first kept")
        runner.stop_and_wait()
        dead_letter(client, queue, job(queue, 2), "KeyError: 'beam' (after 3 attempts)")
        second = schlockmeister(any_broker, location)
        run_service(second, any_broker)
        wait_until(lambda: second.kept == 1, "the second kept")
        assert [g.count for g in groups(location)] == [2]
        assert len(alerts.deliveries) == 1
    finally:
        client.close()


def test_a_new_group_is_mailed_through_the_mailer(
    wait_until, any_broker, run_service, collector, tmp_path
):
    queue = f"spots.{uuid.uuid4().hex[:6]}"
    client = create_transport(any_broker)
    client.connect()
    try:
        client.declare_queue(MAIL_QUEUE)
        mails = collector(ack_with=client)
        client.subscribe(MAIL_QUEUE, mails)
        dead_letter(client, queue, job(queue, 1), "KeyError: 'beam' (after 3 attempts)")
        dead_letter(client, queue, job(queue, 2), "KeyError: 'beam' (after 3 attempts)")
        service = schlockmeister(any_broker, tmp_path, mail_to="ops@example.org")
        run_service(service, any_broker)
        wait_until(lambda: service.kept == 2, "both kept")
        (mail,) = mails.wait_for_count(1)
        message = json.loads(mail.body)
        assert message["parameters"]["recipients"] == ["ops@example.org"]
        assert queue in message["parameters"]["subject"]
        assert "KeyError: 'beam'" in message["content"]
    finally:
        client.close()


def test_dlq_list_and_reinject_group_send_a_whole_group_back(
    wait_until, cross_process_broker, run_service, collector, tmp_path
):
    """(Not on memory://: the commands are other processes, which cannot reach it.)"""
    any_broker = cross_process_broker
    queue, location = f"spots.{uuid.uuid4().hex[:6]}", tmp_path / "DLQ"
    client = create_transport(any_broker)
    client.connect()
    try:
        for image in (1, 2):
            dead_letter(client, queue, job(queue, image), "OSError: disk full (after 3 attempts)")
        dead_letter(client, queue, b"x", "ValueError: other (after 3 attempts)")
        service = schlockmeister(any_broker, location)
        run_service(service, any_broker)
        wait_until(lambda: service.kept == 3, "all kept")
        listed = CliRunner().invoke(dlq_list, ["--location", str(location), "--json"])
        answer = json.loads(listed.stdout)
        (disk_full,) = [g for g in answer["groups"] if g["exception"] == "OSError"]
        assert (disk_full["count"], disk_full["waiting"]) == (2, 2)
        assert disk_full["recipe_ids"] == ["job-1", "job-2"]
        text = CliRunner().invoke(dlq_list, ["--location", str(location)]).stdout.splitlines()
        start = text.index(
            f"group {disk_full['id']}: 2 dead letters (2 waiting) from {queue}, step 2"
        )
        assert text[start + 2 : start + 4] == [
            "  example: OSError: disk full (after 3 attempts)",
            "  recipe IDs: job-1, job-2",
        ]
        back = collector(ack_with=client)
        client.subscribe(queue, back)
        arguments = ["-t", any_broker, "--location", str(location), "--remove"]
        result = CliRunner().invoke(dlq_reinject, [*arguments, "--group", str(disk_full["id"])])
        assert result.exit_code == 0, result.output
        payloads = [wire.decode(d.body, d.headers, "").payload for d in back.wait_for_count(2)]
        assert sorted(p["image"] for p in payloads) == [1, 2]
        again = CliRunner().invoke(dlq_reinject, [*arguments, "--group", str(disk_full["id"])])
        assert "no dead letters waiting" in again.stdout
        listed = json.loads(
            CliRunner().invoke(dlq_list, ["--location", str(location), "--json"]).stdout
        )
        assert {g["exception"]: g["waiting"] for g in listed["groups"]} == {
            "OSError": 0,
            "ValueError": 1,
        }
        unknown = CliRunner().invoke(dlq_reinject, [*arguments, "--group", "999"])
        assert unknown.exit_code == 1 and "no group 999 in" in unknown.output
    finally:
        client.close()


def test_dlq_list_says_when_nothing_was_recorded(tmp_path):
    result = CliRunner().invoke(dlq_list, ["--location", str(tmp_path)])
    assert result.stdout == f"No dead letters recorded in {tmp_path}\n"
    as_json = json.loads(
        CliRunner().invoke(dlq_list, ["--location", str(tmp_path), "--json"]).stdout
    )
    assert as_json == {"location": str(tmp_path), "groups": []}


def test_a_dead_letter_that_cannot_be_kept_stays_in_its_queue(
    wait_until, cross_process_broker, run_service, collector, tmp_path, caplog
):
    """Its file cannot be written (where today's directory should be is a file): one
    error line, and the dead letter goes back to its queue, not acknowledged."""
    url, queue, location = cross_process_broker, f"spots.{uuid.uuid4().hex[:6]}", tmp_path
    (location / time.strftime("%Y-%m-%d")).write_text("in the way")
    caplog.set_level(logging.ERROR, logger="zocalo.service.Schlockmeister")
    client = create_transport(url)
    client.connect()
    try:
        dead_letter(client, queue, job(queue, 1), "KeyError: 'beam' (after 3 attempts)")
        service = schlockmeister(url, location)
        runner = run_service(service, url)
        wait_until(lambda: any("cannot keep" in r.getMessage() for r in caplog.records), "it")
        runner.stop_and_wait()
        assert service.kept == 0 and groups(location) == []
        back = collector(ack_with=client)
        client.subscribe(dlq_name(queue), back)
        (delivery,) = back.wait_for_count(1)
        assert wire.decode(delivery.body, delivery.headers, "").payload == {"image": 1}
        assert delivery.headers["zocalo-dlq-reason"] == "KeyError: 'beam' (after 3 attempts)"
    finally:
        client.close()
