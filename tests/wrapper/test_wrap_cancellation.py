"""A wrapper whose recipe was cancelled before it started (its job waited in a cluster
queue meanwhile) runs nothing and reports nothing, on every transport whose broker keeps
cancellations (``Capability.KEPT_BROADCASTS``); on the others (ActiveMQ) it cannot know,
runs, and only a cancellation made while it runs stops it."""

from __future__ import annotations

import logging
import threading
import uuid

from wrapping import Outputs, recipe_body, wrapped_recipe

from zocalo.recipe.cancel import broadcast_cancel
from zocalo.service.status import Status
from zocalo.transport import create_transport
from zocalo.transport.base import Capability
from zocalo.wrapper.command import CommandWrapper
from zocalo.wrapper.live_step import LiveRecipeWrapper
from zocalo.wrapper.wrap import run_wrapper


def test_a_wrapper_started_after_its_recipe_was_cancelled_runs_nothing(
    each_transport_url, collector, tmp_path, caplog
):
    # Its own recipe ID: a broker that keeps cancellations (a RabbitMQ stream in a
    # vhost the session shares) replays this one to every later wrapper of that recipe.
    recipe_id = str(uuid.uuid4())
    started = tmp_path / "started"
    with (
        create_transport(each_transport_url) as client,
        create_transport(each_transport_url) as job,
    ):
        outputs = Outputs(client, collector)
        broadcast_cancel(client, "some-other-recipe")
        broadcast_cancel(client, recipe_id)
        recipe = wrapped_recipe({"command": ["touch", str(started)]})
        step = LiveRecipeWrapper.from_body(recipe_body(recipe, recipe_id=recipe_id), job)
        with caplog.at_level(logging.INFO, logger="zocalo.wrap"):
            final = run_wrapper(CommandWrapper(), job, name="command", recipe_wrapper=step)
        if Capability.KEPT_BROADCASTS in client.capabilities:
            assert final == Status.END
            assert not started.exists(), "the command never ran"
            assert any(
                f"recipe {recipe_id} was cancelled before it started" in r.getMessage()
                for r in caplog.records
            )
            # Nothing was sent: a message the wrapper sends after this one would come first.
            probe = recipe_body(wrapped_recipe(channels=("completed",)), recipe_id="probe")
            LiveRecipeWrapper.from_body(probe, job).send_to("completed", "probe")
            assert outputs.wait("completed") == ["probe"]
            for channel in ("starting", "success", "failure"):
                assert outputs.payloads(channel) == []
        else:  # it cannot know: it runs
            assert started.exists()
            assert outputs.wait("success")[0]["exit_code"] == 0


def test_a_cancellation_made_while_it_runs_still_stops_it(
    each_transport_url, collector, tmp_path, wait_until
):
    """After reading the kept cancellations, the wrapper goes on hearing new ones."""
    # Its own recipe ID: a broker that keeps cancellations (a RabbitMQ stream in a
    # vhost the session shares) replays this one to every later wrapper of that recipe.
    recipe_id = str(uuid.uuid4())
    started = tmp_path / "started"
    with (
        create_transport(each_transport_url) as client,
        create_transport(each_transport_url) as job,
    ):
        outputs = Outputs(client, collector)
        recipe = wrapped_recipe({"command": ["sh", "-c", f"touch {started}; sleep 60"]})
        step = LiveRecipeWrapper.from_body(recipe_body(recipe, recipe_id=recipe_id), job)
        wrapper = CommandWrapper()
        runner = threading.Thread(
            target=run_wrapper,
            args=(wrapper, job),
            kwargs={"name": "command", "recipe_wrapper": step},
        )
        runner.start()
        try:
            wait_until(started.exists, "the command to start")
            broadcast_cancel(client, recipe_id)
            runner.join(30)
            assert not runner.is_alive()
        finally:
            wrapper.stop()
            runner.join(30)
        assert wrapper.result is not None and wrapper.result["stopped"] is True
        assert outputs.wait("starting") == ["Starting processing"]
        for channel in ("success", "failure"):
            assert outputs.payloads(channel) == []
