"""The demo finishes with every job recorded and nothing dead-lettered."""

from __future__ import annotations

import pytest

from zocalo.demo import run_demo


@pytest.mark.parametrize("in_process", [True, False], ids=["threads-memory", "processes-sqlite"])
def test_demo_completes_every_job(in_process):
    result = run_demo(jobs=6, images=5, in_process=in_process, rate=50)
    assert (result.completed, result.lost, result.dead_lettered) == (6, 0, 0)
    assert result.handled == 6 * (2 * 5 + 1), "find spots + summary per image, record per job"
    assert len(result.latencies_ms) == 6
    assert result.ok
