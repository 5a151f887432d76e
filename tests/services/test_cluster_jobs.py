"""The cluster submission service's job record: what it keeps, across a reopening."""

from __future__ import annotations

from zocalo.services.cluster_jobs import JobBook


def test_the_record_outlives_the_process_that_wrote_it(tmp_path):
    path = tmp_path / "jobs.db"
    book = JobBook(path)
    book.intend("a", "zocalo-a", "recipe-1", 1)
    book.submitted("a", 41)
    book.intend("b", "zocalo-b", "recipe-1", 2)
    book.close()
    again = JobBook(path)
    first = again.get("a")
    assert first is not None and (first.state, first.job_id, first.tag) == (
        "submitted",
        41,
        "zocalo-a",
    )
    assert [record.key for record in again.active()] == ["a"]
    again.ended("a", {"jobid": 41, "state": "COMPLETED"}, reported_by="poll-1")
    ended = again.get("a")
    assert ended is not None and ended.outcome == {"jobid": 41, "state": "COMPLETED"}
    assert ended.reported_by == "poll-1"
    assert again.active() == []


def test_cancelled_recipes_and_what_is_forgotten(tmp_path):
    book = JobBook(tmp_path / "jobs.db")
    book.intend("running", "t1", "recipe-1", 1)
    book.submitted("running", 1)
    book.intend("done", "t2", "recipe-1", 2)
    book.submitted("done", 2)
    book.ended("done", {}, "poll")
    assert [record.key for record in book.cancel_recipe("recipe-1")] == ["running"]
    assert book.is_cancelled("recipe-1") and not book.is_cancelled("recipe-2")
    assert not book.is_cancelled(None)
    book.intend("never-submitted", "t3", "recipe-2", 1)
    assert book.forget_ended(older_than=-1) == 2  # the ended job and the refused submission
    assert book.get("running") is not None
    assert book.get("done") is None and book.get("never-submitted") is None
    assert not book.is_cancelled("recipe-1")
