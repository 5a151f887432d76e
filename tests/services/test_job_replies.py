"""Results back to the caller: a job that fans out to three replies, from Python
(``zocalo.submit``) with services on threads on every transport, and from
``zocalo.go --wait`` with every service a real ``zocalo.service`` process; a caller that
gives up before its replies come holds nothing up, and they are dropped, one line each."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from replying_services import (
    ANSWER,
    CRASHING,
    CRASHING_RECIPE,
    DONE,
    FANOUT,
    RECIPE,
    Answer,
    Fanout,
)

import zocalo
from transport_params import transports
from zocalo.cli.go import command as go
from zocalo.launch import ServiceProcesses
from zocalo.replies import ReplyTimeout
from zocalo.transport import create_transport

HERE = Path(__file__).parent


#: Every broker of ``url`` and ``shared_url``, and ActiveMQ: replies come back on each.
ON_THREADS = pytest.mark.parametrize(
    "url",
    transports("memory", "sqlite", "rabbitmq", "stomp"),
    indirect=True,
)
IN_PROCESSES = pytest.mark.parametrize(
    "shared_url",
    transports("sqlite", "rabbitmq", "stomp"),
    indirect=True,
)


@pytest.fixture
def queues(client):
    """The job's queues exist before anything is sent to them (RabbitMQ returns a message
    for a queue nobody declared), and ``DONE``, where the job ends, is collected."""
    for queue in (FANOUT, ANSWER, DONE):
        client.declare_queue(queue)


# -- from Python, services on threads ----------------------------------------------------------


@ON_THREADS
def test_submit_yields_each_reply_of_a_job_that_fans_out(
    url, queues, client, collector, run_service
):
    run_service(Fanout(), url)
    run_service(Answer(), url)
    done = collector(ack_with=client)
    client.subscribe(DONE, done)
    replies = zocalo.submit(url, recipe=RECIPE, parameters={"parts": 3}, direct=True, results=3)
    received = list(replies)
    assert sorted(reply.payload["part"] for reply in received) == [0, 1, 2]
    assert all(reply.payload["squared"] == reply.payload["part"] ** 2 for reply in received)
    assert {(reply.recipe_id, reply.step) for reply in received} == {(replies.recipe_id, 2)}
    assert len(done.wait_for_count(3)) == 3, "the replies went with the step's other outputs"


@ON_THREADS
def test_submit_through_the_dispatcher_on_the_callers_own_connection(
    url, site, dispatcher, queues, client, run_service
):
    site.add_recipe("fanout", RECIPE)
    run_service(Fanout(), url)
    run_service(Answer(), url)
    replies = zocalo.submit(
        client, ["fanout"], {"parts": 3}, dcid_required=False, results=3, timeout=30
    )
    assert sorted(reply.payload["part"] for reply in replies) == [0, 1, 2]
    assert client.connected, "a connection the caller gave stays the caller's"


@ON_THREADS
def test_a_caller_that_gave_up_holds_nothing_up(
    url, queues, client, collector, run_service, dropped_replies
):
    """The caller's connection closes when it gives up, and its reply queue goes with it:
    each reply is dropped with a log line, and the step's other outputs and its
    acknowledgement go through as if the caller were there."""
    run_service(Fanout(), url)
    replies = zocalo.submit(
        url, recipe=RECIPE, parameters={"parts": 3}, direct=True, results=3, timeout=1
    )
    with pytest.raises(ReplyTimeout) as gave_up:
        next(replies)
    assert str(gave_up.value) == (
        f"timed out: 0 of 3 replies for recipe {replies.recipe_id} arrived within 1 s"
    )
    dropped_replies.wait_until_gone(client, replies.reply_to)
    before = dropped_replies.count(replies.reply_to)

    done = collector(ack_with=client)
    client.subscribe(DONE, done)
    answer = run_service(Answer(), url)
    assert len(done.wait_for_count(3)) == 3
    answer.stop_and_wait()
    assert dropped_replies.count(replies.reply_to) == before + 3
    senders = {(r.recipe_ID, r.recipe_step) for r in dropped_replies.records(replies.reply_to)[-3:]}
    assert senders == {(replies.recipe_id, 2)}, "each line names the job and step, as they do"
    stats = answer.stats.snapshot()
    assert (stats["handled"], stats["publish_failed"], stats["failed"]) == (3, 0, 0)


# -- zocalo.go --wait, every service a zocalo.service process -----------------------------------


@pytest.fixture
def start_services(shared_url, site):
    """``start_services(*names, log=None, options=())``: real ``zocalo.service`` processes
    on the site's configuration (and ``options``), with the test plugins and this
    directory's services importable; stopped at teardown."""
    path = [str(HERE), str(HERE / "plugins"), os.environ.get("PYTHONPATH", "")]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    started: list[ServiceProcesses] = []

    def start(
        *names: str, log: io.StringIO | None = None, options: tuple[str, ...] = ()
    ) -> ServiceProcesses:
        every = ["--config", str(site.config), *options]
        services = ServiceProcesses(names, shared_url, log, options=every, env=environment)
        started.append(services)
        return services.__enter__()

    yield start
    for services in started:
        services.stop()


@pytest.fixture
def on_shared_broker(shared_url):
    """A client of the broker the service processes use; the job's queues declared."""
    with create_transport(shared_url) as client:
        for queue in (FANOUT, ANSWER, DONE, CRASHING):
            client.declare_queue(queue)
        yield client


@IN_PROCESSES
def test_zocalo_go_waits_for_the_three_replies_and_prints_each(
    shared_url, site, on_shared_broker, start_services
):
    site.add_recipe("fanout", RECIPE)
    services = start_services("Dispatcher", "replying_services:Fanout", "replying_services:Answer")
    try:
        result = CliRunner().invoke(
            go,
            [
                "-r",
                "fanout",
                "-s",
                "parts=3",
                "-n",
                "--wait",
                "60",
                "--results",
                "3",
                "-t",
                shared_url,
            ],
            catch_exceptions=False,
        )
    finally:
        services.stop()
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(printed, key=lambda reply: reply["part"]) == [
        {"part": 0, "squared": 0},
        {"part": 1, "squared": 1},
        {"part": 2, "squared": 4},
    ]
    (said,) = result.stderr.splitlines()
    assert said.startswith("recipe ") and said.endswith(
        "sent to processing_recipe; waiting up to 60 s for 3 replies"
    )
    assert services.stats["replying_services:Answer"]["handled"] == 3


@IN_PROCESSES
def test_zocalo_go_that_times_out_says_so_and_the_job_goes_on_without_it(
    shared_url, site, on_shared_broker, collector, dropped_replies, start_services
):
    """The caller gives up before any service answers: exit 1 with a clear line. The job
    goes on; each reply finds no queue and is dropped with a log line in the service,
    which acknowledges its input with its other output, as always."""
    site.add_recipe("fanout", RECIPE)
    start_services("Dispatcher", "replying_services:Fanout")
    result = CliRunner().invoke(
        go,
        ["-r", "fanout", "-s", "parts=3", "-n", "--wait=2", "--results=3", "-v", "-t", shared_url],
    )
    assert result.exit_code == 1, result.output
    said = result.stderr.splitlines()
    recipe_id = said[-2].split()[1]
    assert said[-1] == f"Error: timed out: 0 of 3 replies for recipe {recipe_id} arrived within 2 s"
    assert "Traceback" not in result.output and result.stdout == ""
    request = json.loads(next(line for line in said if line.startswith("body: "))[6:])
    reply_queue = request["parameters"]["zocalo_reply_to"]
    dropped_replies.wait_until_gone(on_shared_broker, reply_queue)

    done = collector(ack_with=on_shared_broker)
    on_shared_broker.subscribe(DONE, done)
    log = io.StringIO()
    answer = start_services("replying_services:Answer", log=log)
    assert len(done.wait_for_count(3, timeout=30)) == 3
    answer.stop()
    dropped = [line for line in log.getvalue().splitlines() if "dropped a reply" in line]
    assert len(dropped) == 3, dropped
    assert all(repr(reply_queue) in line and f"[{recipe_id}:2]" in line for line in dropped)
    stats = answer.stats["replying_services:Answer"]
    assert (stats["handled"], stats["publish_failed"], stats["failed"]) == (3, 0, 0)


@pytest.mark.slow  # a service process crashes and is restarted
@IN_PROCESSES
def test_zocalo_go_counts_a_reply_repeated_after_a_crash_once(
    shared_url, site, on_shared_broker, start_services, tmp_path
):
    """A handler replies "a" and "b" (they go out at once), then its process dies before
    the input is acknowledged; restarted, it handles the input again and replies "a",
    "b" and "c". ``--results 3`` prints each distinct reply once, and waits for "c"."""
    site.add_recipe("crashing", CRASHING_RECIPE)
    marker = tmp_path / "crashed"
    start_services("Dispatcher")
    start_services("replying_services:ReplyThenCrash", options=("--restart",))
    options = ["-s", f"marker={marker}", "-n", "--wait=60", "--results=3", "-t", shared_url]
    result = CliRunner().invoke(go, ["-r", "crashing", *options], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == ["a", "b", "c"]
    assert marker.exists(), "the worker crashed once, after replying"
