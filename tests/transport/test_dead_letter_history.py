"""A dead letter's history entries are dated in ISO-8601 UTC text, and every reader still
reads the older entries: the runner's plain reasons, epoch seconds as ``time``, and
RabbitMQ's ``x-death`` tables."""

from __future__ import annotations

import datetime

from zocalo.cli.dlq_list import group_lines
from zocalo.dlq.files import dead_lettered_at, export
from zocalo.dlq.record import Group
from zocalo.transport.dead_letters import (
    describe_entry,
    entry_seconds,
    runner_entry,
    utc_timestamp,
)

#: 2021-10-01 15:29:16.582 UTC
MOMENT = 1633102156.582


def test_a_timestamp_is_iso_utc_text_to_the_millisecond():
    assert utc_timestamp(MOMENT) == "2021-10-01T15:29:16.582Z"
    entry = runner_entry("ValueError: no")
    assert set(entry) == {"reason", "at"}
    parsed = datetime.datetime.fromisoformat(entry["at"])
    assert parsed.utcoffset() == datetime.timedelta(0)


def test_new_and_old_entries_are_read_alike():
    new = {"reason": "ValueError: no", "at": "2021-10-01T15:29:16.582Z"}
    old_delivery = {"queue": "q", "reason": "rejected", "delivery_count": 2, "time": MOMENT}
    death = {"queue": "q", "reason": "delivery_limit", "count": 1, "time": 1633102156.0}
    assert entry_seconds(new) == MOMENT
    assert entry_seconds(old_delivery) == MOMENT
    assert [entry_seconds(e) for e in ("ValueError: old", {"at": "never"}, {"time": True})] == [
        None,
        None,
        None,
    ]
    assert describe_entry(new) == "2021-10-01T15:29:16.582Z ValueError: no"
    assert describe_entry(old_delivery) == "2021-10-01T15:29:16.582Z q: rejected (delivery 2)"
    assert describe_entry(death) == "2021-10-01T15:29:16.000Z q: delivery_limit (1 times)"
    assert describe_entry("ValueError: old\nsecond line") == "ValueError: old second line"
    assert describe_entry({"reason": "x"}) == "(no time) x"
    # The newest dated entry dates the dead letter (its file's name), whichever kind.
    history = ["ValueError: old", old_delivery, new, "ValueError: newer, undated"]
    assert dead_lettered_at({"zocalo-dlq-history": history}) == MOMENT


def test_dlq_list_shows_the_latest_history_dated_where_it_can():
    group = Group(1, "f", "spots", 2, "ValueError", "no", "ValueError: no", 0, 0, 1, True)
    assert not any("history" in line for line in group_lines(group)), "none recorded"
    group.history = ["ValueError: old", {"reason": "ValueError: no", "at": utc_timestamp(MOMENT)}]
    assert group_lines(group)[-3:] == [
        "  history of the latest, oldest first:",
        "    ValueError: old",
        "    2021-10-01T15:29:16.582Z ValueError: no",
    ]


def test_times_no_calendar_shows_are_no_times(tmp_path):
    """Headers anyone may write: a NaN, huge or negative time, or an ISO text beyond the
    year 9999 in UTC, dates nothing; it must not stop the dead letter's export (its
    file's name) or ``zocalo dlq list`` with a traceback."""
    bad = [{"time": 1e20}, {"time": float("nan")}, {"time": float("inf")}, {"time": -5e18}]
    bad.append({"at": "9999-12-31T23:59:59-14:00"})
    assert [entry_seconds(entry) for entry in bad] == [None] * len(bad)
    shown = [describe_entry({**entry, "reason": "x"}) for entry in bad]
    assert shown == ["(no time) x"] * 4 + ["9999-12-31T23:59:59-14:00 x"]  # (text: as it is)
    headers = {
        "x-death": [{"queue": "q", "time": 1e20}],
        "timestamp": "nan",
        "zocalo-dlq-history": [{"reason": "ok", "at": "2021-10-01T15:29:16.582Z"}, *bad],
    }
    assert dead_lettered_at(headers) == MOMENT
    exported = export(tmp_path, "q", headers, b"{}", "m-1", now=MOMENT + 60)
    assert exported.dead_lettered == MOMENT and exported.path.exists()
