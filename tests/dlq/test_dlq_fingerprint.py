"""Fingerprints: dead letters that failed alike share one; the record counts each once."""

from __future__ import annotations

import json
import os
import stat

from zocalo.dlq.files import export
from zocalo.dlq.fingerprint import facts, normalise, split_reason
from zocalo.dlq.record import RECORD_NAME, DeadLetterRecord
from zocalo.recipe import Recipe, wire
from zocalo.transport.dead_letters import dead_letter_marks

RECIPE = Recipe({"1": {"queue": "find", "output": 2}, "2": {"queue": "spots"}, "start": [[1, 0]]})


def headers(reason: str, queue: str = "spots") -> dict:
    return {"workflows-recipe": True, **dead_letter_marks(reason=reason, queue=queue, history=[])}


def body(image: int, pointer: int = 2, recipe_id: str = "job") -> bytes:
    return wire.encode(RECIPE, pointer, [1] if pointer == 2 else [], {"ID": recipe_id}, image)


def test_particulars_are_taken_out_of_a_message():
    assert (
        normalise("/data/cm1234-5/image_00042.cbf at 3.5 s")
        == "/data/cm<n>-<n>/image_<n>.cbf at <n> s"
    )
    assert normalise("job 0f5e3b44-1c2d-4e5f-8a9b-0c1d2e3f4a5b  failed") == "job <uuid> failed"
    assert normalise("consumer vm.19717.47f629205682 died") == "consumer vm.<n>.<hex> died"
    assert normalise("x" * 1000) == "x" * 300


def test_the_runners_reasons_give_the_exception_type():
    assert split_reason("FileNotFoundError: /a/b (after 3 attempts)") == (
        "FileNotFoundError",
        "/a/b",
    )
    assert split_reason("KeyError: 'x'") == ("KeyError", "'x'")
    assert split_reason("delivered 5 times (limit 5); last: consumer c died") == (
        "",
        "delivered 5 times (limit 5); last: consumer c died",
    )
    assert split_reason("message broker.db:4 from queue 'q': body is not valid JSON")[0] == ""


def test_images_failing_alike_share_a_fingerprint_and_others_do_not():
    one = facts("dlq.spots", headers("OSError: /data/img_001.cbf (after 3 attempts)"), body(1))
    two = facts("dlq.spots", headers("OSError: /data/img_002.cbf (after 3 attempts)"), body(2))
    assert one.fingerprint == two.fingerprint
    assert (one.queue, one.step, one.recipe_id, one.exception) == ("spots", 2, "job", "OSError")
    other_step = facts("dlq.spots", headers("OSError: /data/img_001.cbf"), body(1, pointer=1))
    other_type = facts("dlq.spots", headers("IOError: /data/img_001.cbf"), body(1))
    other_queue = facts("dlq.x", headers("OSError: /data/img_001.cbf", queue="x"), body(1))
    prints = {f.fingerprint for f in (one, other_step, other_type, other_queue)}
    assert len(prints) == 4


def test_a_foreign_or_broken_dead_letter_still_says_what_it_can():
    bare = facts("dlq.q", {}, b"\xff")
    assert (bare.queue, bare.reason, bare.step, bare.recipe_id) == (
        "q",
        "unknown (no reason recorded)",
        None,
        None,
    )
    death = [{"queue": "q", "reason": "delivery_limit"}]
    broken = json.dumps({"recipe": "nonsense", "recipe-pointer": 3, "environment": {"ID": 7}})
    from_rabbitmq = facts("dlq.q", {"workflows-recipe": True, "x-death": death}, broken.encode())
    assert (from_rabbitmq.step, from_rabbitmq.recipe_id, from_rabbitmq.history) == (3, "7", death)


def test_the_record_counts_a_dead_letter_delivered_twice_once(tmp_path):
    previous = os.umask(0)
    try:
        record = DeadLetterRecord(tmp_path / "DLQ")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "DLQ" / RECORD_NAME).stat().st_mode) == 0o600
    about = facts("dlq.spots", headers("OSError: /data/img_001.cbf"), body(1))
    exported = export(tmp_path / "DLQ", "dlq.spots", {}, b"1", "m1", now=1.0)
    first = record.add(about, exported, now=10.0)
    again = record.add(about, exported, now=20.0)
    assert (first.new_group, first.new_letter) == (True, True)
    assert (again.new_group, again.new_letter) == (False, False)
    assert (again.group.count, again.group.waiting, again.group.recipe_ids) == (1, 1, ["job"])
    record.mark_alerted(first.group.id)
    record.mark_reinjected(exported.path)
    (group,) = record.groups()
    assert (group.alerted, group.waiting) == (True, 0)
    assert record.waiting_files(group.id) == []
    record.close()
