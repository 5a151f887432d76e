"""BaseWrapper and the wrap runner: channels, the zocalo.wrap sequence, status, log fields."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from wrapping import RECIPE_ID

from zocalo.errors import InvalidMessage
from zocalo.recipe.model import Recipe
from zocalo.recipe.wire import Reply, encode
from zocalo.replies import Replies
from zocalo.service.status import STATUS_TOPIC, Status
from zocalo.wrapper.base import BaseWrapper
from zocalo.wrapper.live_step import LiveRecipeWrapper
from zocalo.wrapper.status import WRAPPER_STATUS_INTERVAL
from zocalo.wrapper.wrap import run_wrapper


class Scripted(BaseWrapper):
    """Does what the test says: return a value, raise, or report along the way."""

    def __init__(self, outcome: Any = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome

    def run(self) -> bool:
        self.update({"progress": 50})
        self.log.info("half way")
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return bool(self.outcome)


def test_each_helper_sends_on_its_channel(live_step, outputs):
    wrapper = BaseWrapper()
    wrapper.set_recipe_wrapper(live_step())
    wrapper.prepare("p")
    wrapper.update({"u": 1})
    wrapper.success({"s": 2})
    wrapper.failure(ValueError("bad frame"))
    wrapper.done("d")
    wrapper.record_result_individual_file({"file_name": "a"})
    wrapper.record_result_all_files({"filelist": []})
    assert outputs.wait("starting") == ["p"]
    assert outputs.wait("updates") == [{"u": 1}]
    assert outputs.wait("success") == [{"s": 2}]
    assert outputs.wait("failure") == ["bad frame"]  # text, as python-zocalo sends it
    assert outputs.wait("completed") == ["d"]
    assert outputs.wait("result-individual-file") == [{"file_name": "a"}]
    assert outputs.wait("result-all-files") == [{"filelist": []}]


def test_sends_carry_the_recipe_on_from_the_wrapped_step(live_step, outputs):
    wrapper = BaseWrapper()
    wrapper.set_recipe_wrapper(live_step(payload={"image": 3}))
    wrapper.success("ok")
    (body,) = [outputs.wait("success") and outputs.bodies("success")][0]
    assert body["environment"] == {"ID": RECIPE_ID}
    assert body["recipe-path"] == [1]
    assert body["recipe"]["1"]["queue"] == "wrapped"


def test_channels_the_step_lacks_and_no_recipe_are_no_ops(live_step, outputs, caplog):
    wrapper = BaseWrapper()
    wrapper.prepare("nobody listens")  # no recipe at all
    wrapper.set_recipe_wrapper(live_step(channels=("completed",)))
    with caplog.at_level(logging.WARNING):
        wrapper.prepare("p")
        wrapper.success("s")
        wrapper.done("d")
    assert outputs.wait("completed") == ["d"]
    assert outputs.payloads("starting") == outputs.payloads("success") == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_recipe_without_an_id_is_refused_in_one_line(client):
    recipe = Recipe({"1": {"queue": "wrapped"}, "start": [[1, {}]]})
    step = LiveRecipeWrapper.from_body(encode(recipe, 1, [], {}, {}), client)
    with pytest.raises(InvalidMessage, match="no ID"):
        BaseWrapper().set_recipe_wrapper(step)


def test_config_is_the_environment_given(client):
    marker = object()
    assert BaseWrapper(environment={"config": marker}).config is marker
    assert BaseWrapper().config is None


def test_run_reports_success_in_python_zocalos_order(live_step, outputs, caplog):
    step = live_step()
    with caplog.at_level(logging.INFO):
        final = run_wrapper(Scripted(True), step.transport, name="scripted", recipe_wrapper=step)
    assert final == Status.END
    assert outputs.wait("starting") == ["Starting processing"]
    assert outputs.wait("updates") == [{"progress": 50}]
    assert outputs.wait("success") == ["Finished processing"]
    assert outputs.wait("completed") == ["Finished processing"]
    assert outputs.payloads("failure") == []
    (line,) = [r for r in caplog.records if r.getMessage() == "half way"]
    assert (line.recipe_ID, line.recipe_step) == (RECIPE_ID, 1)


def test_a_run_returning_false_reports_failure_then_completed(live_step, outputs):
    step = live_step()
    assert run_wrapper(Scripted(False), step.transport, name="w", recipe_wrapper=step) == Status.END
    assert outputs.wait("failure") == ["Processing failed"]
    assert outputs.wait("completed") == ["Finished processing"]
    assert outputs.payloads("success") == []


def test_a_raising_run_reports_its_text_and_ends_in_error(live_step, outputs):
    step = live_step()
    wrapper = Scripted(RuntimeError("detector offline"))
    assert run_wrapper(wrapper, step.transport, name="w", recipe_wrapper=step) == Status.ERROR
    assert outputs.wait("failure") == ["detector offline"]
    assert outputs.wait("completed") == ["Finished processing"]


def test_a_result_and_failure_reason_replace_the_plain_texts(live_step, outputs):
    class Reporting(BaseWrapper):
        def run(self) -> bool:
            self.result = {"spots": 12}
            return True

    class Explaining(BaseWrapper):
        def run(self) -> bool:
            self.failure_reason = "no diffraction"
            return False

    step = live_step()
    run_wrapper(Reporting(), step.transport, name="w", recipe_wrapper=step)
    run_wrapper(Explaining(), step.transport, name="w", recipe_wrapper=live_step())
    assert outputs.wait("success") == [{"spots": 12}]
    assert outputs.wait("failure") == ["no diffraction"]
    assert {json.dumps(p) for p in outputs.wait("completed", 2)} == {
        json.dumps({"spots": 12}),
        json.dumps("Finished processing"),
    }


def test_status_is_broadcast_at_once_on_each_change_and_at_the_end(live_step, client, collector):
    """Changes go out without waiting for the 3 s repeat (the test would take longer)."""
    statuses = collector()
    client.subscribe_broadcast(STATUS_TOPIC, statuses)
    step = live_step(step={"wrapper": {"task_information": "run 7"}})

    def seen(status: Status, task: str) -> None:
        statuses.wait_until(
            lambda deliveries: any(
                (report := json.loads(d.body))["status"] == status and report["task"] == task
                for d in deliveries
            ),
            f"status {status.name} for {task!r}",
        )

    class Renaming(BaseWrapper):
        def run(self) -> bool:
            seen(Status.PROCESSING, "renaming (run 7)")
            assert self.status_thread is not None
            self.status_thread.taskname += " (still running)"
            seen(Status.PROCESSING, "renaming (run 7) (still running)")
            return True

    started = time.monotonic()
    run_wrapper(Renaming(), step.transport, name="renaming", recipe_wrapper=step)
    seen(Status.END, "renaming (run 7) (still running)")
    assert time.monotonic() - started < WRAPPER_STATUS_INTERVAL
    last = json.loads(statuses.bodies[-1])
    for field in ("host", "workflows", "zocalo"):
        assert last[field]
    assert (last["status"], last["statustext"]) == (Status.END, "shutdown")
    assert last["recipe_ID"] == RECIPE_ID


def test_status_repeats_while_a_wrapper_runs(live_step, client, collector):
    statuses = collector()
    client.subscribe_broadcast(STATUS_TOPIC, statuses)
    step = live_step()

    class Waiting(BaseWrapper):
        def run(self) -> bool:
            # Three broadcasts of the same PROCESSING status: the periodic repeat.
            statuses.wait_until(
                lambda deliveries: (
                    sum(json.loads(d.body)["status"] == Status.PROCESSING for d in deliveries) >= 3
                ),
                "repeated status broadcasts",
            )
            return True

    run_wrapper(Waiting(), step.transport, name="w", recipe_wrapper=step, status_interval=0.05)


def test_a_wrapper_replies_to_the_caller_at_once(client, collector):
    caller = Replies(client)
    recipe = Recipe({"1": {"queue": "wrapped"}, "start": [[1, {}]]})
    environment = {"ID": RECIPE_ID, "zocalo_reply_to": caller.queue}
    step = LiveRecipeWrapper.from_body(encode(recipe, 1, [], environment, {}), client)
    assert step.reply({"resolution": 1.8}) == 1
    assert next(caller) == Reply({"resolution": 1.8}, RECIPE_ID, 1)
    nobody = LiveRecipeWrapper.from_body(encode(recipe, 1, [], {"ID": RECIPE_ID}, {}), client)
    assert nobody.reply("unheard") == 0
