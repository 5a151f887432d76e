"""The runner: handler calls, settling, retries, the DLQ and bad input.

Every test runs on each transport (``each_transport_url``: memory, a real
SQLite file, the machine's RabbitMQ): their callbacks take different paths
through the runner, and RabbitMQ delays retries through dead-lettering wait
queues. Queue names are unique per test (RabbitMQ's vhost is shared by the
session) and declared before anything is sent to them.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from transport_params import transports
from zocalo.errors import InvalidMessage
from zocalo.logs import RecipeContextFilter
from zocalo.recipe import Recipe
from zocalo.recipe.step import RecipeStep
from zocalo.recipe.wire import encode
from zocalo.service import Service, ServiceRunner
from zocalo.service.middleware.base import ATTEMPT_HEADER, REASON_LIMIT
from zocalo.service.middleware.dead_letter import RECIPE_PATH_HEADER
from zocalo.transport import Transport, dlq_name
from zocalo.transport.base import DLQ_HISTORY_HEADER, DLQ_QUEUE_HEADER, DLQ_REASON_HEADER
from zocalo.transport.dead_letters import entry_seconds

ENVIRONMENT = {"ID": "recipe-0001"}
#: A recipe for bodies that never reach a handler (their queue names do not matter).
SAMPLE = Recipe({"1": {"queue": "work", "output": 2}, "2": {"queue": "out"}, "start": [[1, 0]]})
#: Retry delays on RabbitMQ pass wait queues whose TTLs are the delay's bits:
#: 30 ms then 60 ms share wait queues, as the default 1 s then 2 s do, so a
#: second trip meets the first one's x-death entries.
RETRY_DELAY = 0.03
#: Sent last to a queue to show that nothing else arrived before it.
SENTINEL = b"--sentinel--"
module_log = logging.getLogger("tests.science")


@pytest.fixture
def broker_url(each_transport_url: str) -> str:
    """Every test here runs on each transport (this overrides the memory-only default)."""
    return each_transport_url


@pytest.fixture
def names() -> Callable[[str], str]:
    """``names(label)``: a queue name unique to this test."""
    prefix = f"runner.{uuid.uuid4().hex[:10]}"
    return lambda label: f"{prefix}.{label}"


@pytest.fixture
def work(names: Callable[[str], str], client: Transport) -> str:
    """The Multiplier's queue, declared."""
    queue = names("work")
    client.declare_queue(queue)
    return queue


@pytest.fixture
def recipe(work: str, names: Callable[[str], str]) -> Recipe:
    return Recipe(
        {
            "1": {"queue": work, "parameters": {"factor": 3}, "output": {"result": 2}},
            "2": {"queue": names("results")},
            "start": [[1, {"value": 1}]],
        }
    )


class Multiplier(Service):
    """Multiplies; raises on demand, a given number of times per value."""

    def __init__(self, queue: str, failures: dict[int, int] | None = None) -> None:
        super().__init__()
        self.failures = dict(failures or {})
        self.calls: list[Any] = []
        self.add_handler(queue, self.multiply, prefetch=5)

    def multiply(self, step: RecipeStep, payload: dict[str, Any]) -> None:
        self.calls.append(payload)
        module_log.info("multiplying %s", payload["value"])
        if self.failures.get(payload["value"], 0) > 0:
            self.failures[payload["value"]] -= 1
            raise RuntimeError(f"detector offline for {payload['value']}")
        if payload["value"] == "refuse":
            raise InvalidMessage("no image for this collection")
        if payload["value"] == "essay":
            raise RuntimeError("the detector said:\n" + "a line of its log\n" * 2000)
        if payload.get("channel"):
            step.send_to(payload["channel"], payload)
            return
        step.send_to("result", {"value": payload["value"] * step.parameters["factor"]})


def send_work(client: Transport, recipe: Recipe, value: Any, **extra: Any) -> None:
    body = encode(recipe, 1, [], ENVIRONMENT, {"value": value, **extra})
    client.send(recipe[1]["queue"], body, headers={"workflows-recipe": True})


@pytest.fixture
def results(client: Transport, collector: Callable[..., Any], recipe: Recipe) -> Any:
    sink = collector(ack_with=client)
    client.subscribe(recipe[2]["queue"], sink, prefetch=100)
    return sink


@pytest.fixture
def dead(client: Transport, collector: Callable[..., Any], work: str) -> Any:
    sink = collector(ack_with=client)
    client.subscribe(f"dlq.{work}", sink, prefetch=100)
    return sink


def payloads(deliveries: list[Any]) -> list[Any]:
    return [json.loads(delivery.body)["payload"] for delivery in deliveries]


def dead_letters_so_far(client: Transport, dead: Any, queue: str) -> list[bytes]:
    """What ``dead`` (subscribed to ``dlq.<queue>``) received before now.

    A sentinel sent there now arrives after anything dead-lettered earlier (one
    queue, one consumer: first in, first out), so waiting for it is waiting long
    enough: an empty answer means nothing was dead-lettered, not "not yet".
    """
    client.send(dlq_name(queue), SENTINEL)
    arrived = [delivery.body for delivery in dead.wait_for_body(SENTINEL)]
    return arrived[: arrived.index(SENTINEL)]


def test_handler_output_goes_to_the_next_step(client, work, recipe, results, start_service):
    start_service(Multiplier(work))
    send_work(client, recipe, 7)
    (delivery,) = results.wait_for_count(1)
    body = json.loads(delivery.body)
    assert body["payload"] == {"value": 21}
    assert body["recipe-pointer"] == 2
    assert body["recipe-path"] == [1]
    assert body["environment"] == ENVIRONMENT
    assert Recipe(body["recipe"]) == recipe
    assert delivery.headers["workflows-recipe"] is True


@pytest.mark.parametrize(
    ("body", "headers", "expected_reason"),
    [
        (b'{"recipe": {"1": ', {"workflows-recipe": True}, "not valid JSON"),
        (b"\xff\xfe not utf-8", {"workflows-recipe": True}, "not valid JSON"),
        (b'{"payload": 1}', {"workflows-recipe": True}, "not a recipe message"),
        (b"[1, 2, 3]", {"workflows-recipe": True}, "not an object"),
        (b'{"value": 1}', {}, "not a recipe message"),
        (
            json.dumps({"recipe": SAMPLE.to_dict(), "recipe-pointer": 7, "payload": {}}).encode(),
            {"workflows-recipe": True},
            "recipe-pointer 7 names no step",
        ),
        (
            json.dumps({"recipe": SAMPLE.to_dict(), "recipe-pointer": "x", "payload": {}}).encode(),
            {"workflows-recipe": True},
            "bad recipe-pointer",
        ),
        (
            json.dumps({"recipe": {"start": 5, "1": {}}, "recipe-pointer": 1}).encode(),
            {"workflows-recipe": True},
            "invalid recipe",
        ),
    ],
    ids=[
        "truncated-json",
        "not-utf8",
        "no-recipe-keys",
        "json-list",
        "plain-message",
        "pointer-to-missing-step",
        "non-integer-pointer",
        "broken-recipe",
    ],
)
def test_bad_input_is_dead_lettered_with_reason_and_the_service_goes_on(
    client, work, recipe, results, dead, start_service, body, headers, expected_reason, caplog
):
    runner = start_service(Multiplier(work))
    client.send(work, body, headers=headers)
    send_work(client, recipe, 2)
    (dead_letter,) = dead.wait_for_count(1)
    assert dead_letter.body == body, "the dead letter must keep the original body"
    reason = dead_letter.headers[DLQ_REASON_HEADER]
    assert expected_reason in reason
    assert "message" in reason and f"queue {work!r}" in reason, "the reason names the message"
    assert dead_letter.headers[DLQ_QUEUE_HEADER] == work
    assert payloads(results.wait_for_count(1)) == [{"value": 6}]
    assert runner.stats.snapshot()["dead_lettered"] == 1
    assert any(expected_reason in record.getMessage() for record in caplog.records)


def test_handler_failing_once_is_retried_and_succeeds(
    client, work, recipe, results, dead, start_service
):
    service = Multiplier(work, failures={4: 1})
    runner = start_service(service, retry_delay=RETRY_DELAY)
    send_work(client, recipe, 4)
    assert payloads(results.wait_for_count(1)) == [{"value": 12}]
    assert len(service.calls) == 2
    stats = runner.stats.snapshot()
    assert (stats["failed"], stats["retried"], stats["handled"]) == (1, 1, 1)
    send_work(client, recipe, 5)  # sentinel: the retry produced exactly one result
    assert payloads(results.wait_for_count(2)) == [{"value": 12}, {"value": 15}]
    assert dead_letters_so_far(client, dead, work) == []


def test_handler_failing_twice_gets_its_third_attempt(
    client, work, recipe, results, dead, start_service
):
    """The second retry must not vanish (on RabbitMQ: in dead-letter cycle detection)."""
    service = Multiplier(work, failures={4: 2})
    runner = start_service(service, retry_delay=RETRY_DELAY, max_attempts=3)
    send_work(client, recipe, 4)
    assert payloads(results.wait_for_count(1)) == [{"value": 12}]
    assert [call["value"] for call in service.calls] == [4, 4, 4]
    stats = runner.stats.snapshot()
    assert (stats["failed"], stats["retried"], stats["handled"]) == (2, 2, 1)
    assert stats["dead_lettered"] == 0
    send_work(client, recipe, 5)  # sentinel: the retries produced exactly one result
    assert payloads(results.wait_for_count(2)) == [{"value": 12}, {"value": 15}]
    assert dead_letters_so_far(client, dead, work) == []


def test_handler_failing_every_time_ends_in_dlq_while_others_flow(
    client, work, recipe, results, dead, start_service, caplog
):
    service = Multiplier(work, failures={9: 100})
    started = time.time()
    runner = start_service(service, retry_delay=RETRY_DELAY, max_attempts=3)
    send_work(client, recipe, 9)
    for value in range(1, 6):
        send_work(client, recipe, value)
    (dead_letter,) = dead.wait_for_count(1)
    results.wait_for_count(5)
    assert sorted(p["value"] for p in payloads(results.deliveries)) == [3, 6, 9, 12, 15]
    assert [call["value"] for call in service.calls].count(9) == 3
    headers = dead_letter.headers
    assert "RuntimeError: detector offline for 9" in headers[DLQ_REASON_HEADER]
    assert "after 3 attempts" in headers[DLQ_REASON_HEADER]
    assert headers[DLQ_QUEUE_HEADER] == work
    assert headers[RECIPE_PATH_HEADER] == [1]
    assert headers[ATTEMPT_HEADER] == 2, "two retries were published before the DLQ"
    history = headers[DLQ_HISTORY_HEADER]
    assert len(history) == 3 and all("detector offline for 9" in e["reason"] for e in history)
    # Each attempt dated, as ISO-8601 UTC text (AMQP would round an epoch float).
    stamps = [entry_seconds(entry) for entry in history]
    assert all(isinstance(entry["at"], str) and entry["at"].endswith("Z") for entry in history)
    assert started - 1 <= stamps[0] <= stamps[1] <= stamps[2] <= time.time() + 1
    assert not [name for name in headers if "death" in name], "no broker death headers"
    assert json.loads(dead_letter.body)["payload"] == {"value": 9}
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert failures, "each failure is logged with its traceback"
    assert "message" in failures[0].getMessage()
    assert runner.stats.snapshot()["dead_lettered"] == 1


def test_a_handlers_long_error_travels_as_one_short_line(
    client, work, recipe, results, dead, start_service
):
    """An error that carries a whole log (36 kB over 2000 lines) is cut to one line of
    at most REASON_LIMIT characters in the retries' and the dead letter's headers: a
    broker limits a header (ActiveMQ's STOMP codec drops the connection at 10 KiB)."""
    start_service(Multiplier(work), retry_delay=RETRY_DELAY, max_attempts=3)
    send_work(client, recipe, "essay")
    send_work(client, recipe, 2)
    (dead_letter,) = dead.wait_for_count(1)
    assert payloads(results.wait_for_count(1)) == [{"value": 6}]
    reason = dead_letter.headers[DLQ_REASON_HEADER]
    assert reason.startswith("RuntimeError: the detector said: a line of its log a line")
    assert "\n" not in reason and "more characters)" in reason
    history = dead_letter.headers[DLQ_HISTORY_HEADER]
    assert len(history) == 3
    for entry in history:  # the cut's note, and the last one's "(after 3 attempts)"
        assert len(entry["reason"]) <= REASON_LIMIT + 60


def test_input_its_handler_refuses_is_dead_lettered_at_once_in_one_line(
    client, work, recipe, results, dead, start_service, caplog
):
    """An InvalidMessage from a handler means the input is unusable: retrying cannot
    help, and a traceback would bury the one line that says why."""
    service = Multiplier(work)
    runner = start_service(service, retry_delay=RETRY_DELAY, max_attempts=3)
    send_work(client, recipe, "refuse")
    send_work(client, recipe, 2)
    (dead_letter,) = dead.wait_for_count(1)
    assert payloads(results.wait_for_count(1)) == [{"value": 6}]
    assert [call["value"] for call in service.calls].count("refuse") == 1, "not retried"
    reason = dead_letter.headers[DLQ_REASON_HEADER]
    assert "InvalidMessage: no image for this collection" in reason
    assert "attempts" not in reason
    assert dead_letter.headers[RECIPE_PATH_HEADER] == [1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if r.exc_info], "no traceback for a refused input"
    assert any("refused" in r.getMessage() and "no image" in r.getMessage() for r in errors)
    assert runner.stats.snapshot()["retried"] == 0


def test_retries_and_dead_letters_leave_out_the_brokers_headers(
    client, work, recipe, dead, start_service
):
    """A broker's own headers (RabbitMQ's x-death...) are never republished; ours are."""
    start_service(Multiplier(work, failures={9: 100}), retry_delay=RETRY_DELAY, max_attempts=2)
    body = encode(recipe, 1, [], ENVIRONMENT, {"value": 9})
    broker_headers = {
        "x-death": [{"queue": "elsewhere", "reason": "expired", "count": 1}],
        "x-first-death-queue": "elsewhere",
        "x-last-death-reason": "expired",
    }
    client.send(work, body, headers={"workflows-recipe": True, "mine": "kept", **broker_headers})
    (dead_letter,) = dead.wait_for_count(1)
    assert dead_letter.headers["mine"] == "kept"
    assert dead_letter.headers[ATTEMPT_HEADER] == 1
    assert not [name for name in dead_letter.headers if "death" in name]


def test_retry_delay_grows():
    from zocalo.service import RunnerSettings

    settings = RunnerSettings(retry_delay=0.5, retry_backoff=2)
    assert [settings.delay_before(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_the_pause_after_thousands_of_refusals_in_a_row_is_still_a_number():
    """``2.0 ** 1025`` overflows: the growth stops long before, and the hold is capped."""
    from zocalo.service import RunnerSettings
    from zocalo.service.settlement import MAX_HOLD_SECONDS

    settings = RunnerSettings(retry_delay=1.0, retry_backoff=2.0)
    assert settings.delay_before(5000) == settings.delay_before(33) == 2.0**32
    assert min(settings.delay_before(5000), MAX_HOLD_SECONDS) == MAX_HOLD_SECONDS


def test_an_input_whose_refusal_cannot_be_held_back_still_returns(collector):
    """Whatever goes wrong in the confirm callback (a transport's thread, whose executor
    swallows errors), the refused input goes back to its queue at once, never stranded."""
    import threading

    from zocalo.service import RunnerSettings
    from zocalo.service.runner_settings import RunnerStats
    from zocalo.service.settlement import Settlement
    from zocalo.transport import Outgoing, create_transport

    class BrokenPause(RunnerSettings):
        def delay_before(self, attempt: int) -> float:
            raise RuntimeError("no pause today")

    queue = f"runner.{uuid.uuid4().hex[:10]}.work"
    # A delayed confirm: the refusal arrives through the confirmation's callback.
    with create_transport(f"memory://held-{uuid.uuid4().hex}?confirm_delay=0.01") as transport:
        transport.send(queue, b"input")
        received = collector()
        transport.subscribe(queue, received, prefetch=1)
        [delivery] = received.wait_for_count(1)
        settlement = Settlement(transport, BrokenPause(), RunnerStats())
        uncopyable = Outgoing(f"{queue}.out", b"output", {"lock": threading.Lock()})
        settlement.settle(delivery, [uncopyable])
        again = received.wait_for_count(2)[1]
        assert again.body == b"input" and again.redelivered
        assert settlement.stats.snapshot()["publish_failed"] == 1


def test_unknown_channel_is_logged_and_counted_not_silent(
    client, work, recipe, results, dead, start_service, caplog
):
    runner = start_service(Multiplier(work))
    send_work(client, recipe, 1, channel="no-such-channel")
    send_work(client, recipe, 2)
    assert payloads(results.wait_for_count(1)) == [{"value": 6}]
    assert runner.stats.snapshot()["unrouted"] == 1
    warning = next(r for r in caplog.records if "no-such-channel" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert "recipe-0001" in warning.getMessage()
    assert dead_letters_so_far(client, dead, work) == [], "an unknown channel is not a failure"


def test_log_lines_inside_a_handler_carry_recipe_id_and_step(
    client, work, recipe, results, start_service, caplog
):
    caplog.handler.addFilter(RecipeContextFilter())
    caplog.set_level(logging.INFO)
    start_service(Multiplier(work))
    send_work(client, recipe, 3)
    results.wait_for_count(1)
    line = next(r for r in caplog.records if r.getMessage() == "multiplying 3")
    assert line.name == "tests.science", "a module-level logger, not the service's"
    assert (line.recipe_ID, line.recipe_step) == ("recipe-0001", 1)


def test_plain_messages_reach_handlers_that_allow_them(client, names, collector, start_service):
    plain, plain_out = names("plain"), names("plain.out")

    class Plain(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(plain, self.receive, allow_plain=True)

        def receive(self, step: RecipeStep, payload: Any) -> None:
            assert step.recipe is None
            step.send_plain(plain_out, {"echo": payload})

    out = collector(ack_with=client)
    client.subscribe(plain_out, out)
    start_service(Plain())
    client.send(plain, json.dumps({"hello": "world"}))
    (delivery,) = out.wait_for_count(1)
    assert json.loads(delivery.body) == {"echo": {"hello": "world"}}


def test_stop_returns_unhandled_messages_to_the_queue(broker_url, client, names, collector):
    """Deliveries prefetched but not handled go back, not lost, when a service stops."""
    import threading

    release = threading.Event()
    entered = threading.Event()
    slow, slow_out = names("slow"), names("slow.out")
    client.declare_queue(slow)
    client.declare_queue(slow_out)

    class Slow(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(slow, self.work, prefetch=5)

        def work(self, step: RecipeStep, payload: Any) -> None:
            entered.set()
            release.wait(10)
            step.send(payload)

    recipe = Recipe(
        {"1": {"queue": slow, "output": 2}, "2": {"queue": slow_out}, "start": [[1, 0]]}
    )
    from zocalo.transport import create_transport

    runner = ServiceRunner(Slow(), create_transport(broker_url))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    for number in range(5):
        client.send(
            slow, encode(recipe, 1, [], {"ID": "r"}, number), headers={"workflows-recipe": True}
        )
    assert entered.wait(5)
    runner.request_stop()
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    out = collector(ack_with=client)
    back = collector(ack_with=client)
    client.subscribe(slow_out, out, prefetch=10)
    client.subscribe(slow, back, prefetch=10)
    out.wait_for_count(1)
    back.wait_for_count(4)
    handled = payloads(out.deliveries)
    returned = payloads(back.deliveries)
    assert sorted(handled + returned) == [0, 1, 2, 3, 4], "nothing lost"


def test_a_stop_whose_release_is_slow_returns_prefetched_messages_once(
    broker_url, client, names, collector, wait_until
):
    """Deliveries that reach a stopping runner wait for the unsubscribe, then go back once.

    Nacking them while still subscribed hands them straight back to this consumer:
    under load (the release thread starved) they looped until the delivery limit
    sent them to the dead-letter queue with "service stopping".
    """
    import threading

    from zocalo.transport import create_transport

    release, entered = threading.Event(), threading.Event()
    slow = names("slow")
    client.declare_queue(slow)
    dead = collector(ack_with=client)
    client.subscribe(f"dlq.{slow}", dead, prefetch=10)

    class Slow(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(slow, self.work, prefetch=5)

        def work(self, step: RecipeStep, payload: Any) -> None:
            entered.set()
            release.wait(10)

    recipe = Recipe({"1": {"queue": slow}, "start": [[1, 0]]})
    runner = ServiceRunner(Slow(), create_transport(broker_url))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    for number in range(5):
        client.send(
            slow, encode(recipe, 1, [], {"ID": "r"}, number), headers={"workflows-recipe": True}
        )
    assert entered.wait(5)
    with runner._release_lock:  # the release thread is starved: nothing unsubscribes yet
        runner.request_stop()
        release.set()
        wait_until(
            lambda: runner._work.qsize() >= 4 or dead.deliveries,
            "the prefetched deliveries held back (or looping into the DLQ)",
        )
    thread.join(10)
    assert not thread.is_alive()
    back = collector(ack_with=client)
    client.subscribe(slow, back, prefetch=10)
    back.wait_for_count(4)
    assert dead_letters_so_far(client, dead, slow) == [], "nothing dead-lettered by a clean stop"
    assert sorted(payloads(back.deliveries)) == [1, 2, 3, 4]


#: Memory and RabbitMQ only: they refuse a delayed broadcast, and SQLite refuses
#: nothing a handler can send (it honours every feature), so there it never happens.
REFUSING = transports("memory", "rabbitmq")


@pytest.mark.parametrize("each_transport_url", REFUSING, indirect=True)
def test_an_input_whose_outputs_are_refused_returns_after_a_growing_pause(
    broker_url, client, work, names, start_service, wait_until
):
    """No hot loop: each return waits longer than the one before (here 0.2, 0.4, 0.8 s).

    A delayed broadcast is what these two transports refuse (sqlite carries it).
    """
    import time

    calls: list[float] = []

    class Refused(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(work, self.send_on, prefetch=1)

        def send_on(self, step: RecipeStep, payload: Any) -> None:
            calls.append(time.monotonic())
            step.send(payload)

    recipe = Recipe(
        {
            "1": {"queue": work, "output": 2},
            "2": {"topic": names("topic"), "transport-delay": 5},
            "start": [[1, 0]],
        }
    )
    runner = start_service(Refused(), retry_delay=0.2)
    client.send(work, encode(recipe, 1, [], ENVIRONMENT, 0), headers={"workflows-recipe": True})
    wait_until(lambda: len(calls) >= 4, "four deliveries of the refused input", timeout=30)
    first_four = calls[:4]
    gaps = [later - earlier for earlier, later in itertools.pairwise(first_four)]
    assert all(gap >= 0.9 * pause for gap, pause in zip(gaps, (0.2, 0.4, 0.8), strict=True)), gaps
    assert runner.stats.publish_failed >= 3


def run_in_thread(runner: ServiceRunner) -> tuple[Any, list[BaseException]]:
    """Start ``runner.run`` on a thread; what it raised lands in the returned list."""
    import threading

    raised: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as error:  # what a worker process would die of
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert runner.started.wait(10)
    return thread, raised


def test_a_handler_that_exits_stops_the_service_and_its_message_returns(
    broker_url, client, work, recipe, collector
):
    """``sys.exit()`` in a handler ends the service, as it ends any program, on every
    transport: on SQLite and RabbitMQ it used to end only their callback thread, and
    the service sat there alive, consuming nothing, for ever."""
    from zocalo.transport import create_transport

    class Exits(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(work, self.leave, prefetch=1)

        def leave(self, step: RecipeStep, payload: Any) -> None:
            raise SystemExit(3)

    runner = ServiceRunner(Exits(), create_transport(broker_url))
    thread, raised = run_in_thread(runner)
    send_work(client, recipe, 1)
    thread.join(10)
    assert not thread.is_alive(), "the service goes on after its handler exited"
    assert [type(error) for error in raised] == [SystemExit]
    back = collector(ack_with=client)
    client.subscribe(work, back)
    assert payloads(back.wait_for_count(1)) == [{"value": 1}], "the message is not lost"


def test_a_raising_hook_stops_the_service_with_its_error(broker_url, client, work, recipe, results):
    """A hook that raises is a bug, not bad input: the service stops with the error (a
    supervisor restarts it) on every transport alike; the message was settled first."""
    from zocalo.service import Middleware
    from zocalo.service.middleware import default_middleware
    from zocalo.transport import create_transport

    class Broken(Middleware):
        def after_message(self, runner, message, outcome, seconds):
            raise ValueError("a broken hook")

    runner = ServiceRunner(
        Multiplier(work), create_transport(broker_url), middleware=[*default_middleware(), Broken()]
    )
    thread, raised = run_in_thread(runner)
    send_work(client, recipe, 2)
    thread.join(10)
    assert not thread.is_alive(), "the service goes on after a hook raised"
    assert [str(error) for error in raised] == ["a broken hook"]
    assert payloads(results.wait_for_count(1)) == [{"value": 6}]


def test_a_topic_handler_gets_each_broadcast_and_is_never_retried(
    client, names, collector, start_service, caplog
):
    """Broadcasts have no queue to retry on or dead-letter from: a failure is counted
    and logged, and the handler goes on to the next broadcast."""
    topic, out = names("topic"), names("topic.out")
    client.declare_queue(out)
    calls: list[Any] = []

    class Listener(Service):
        def __init__(self) -> None:
            super().__init__()
            self.add_handler(topic, self.hear, broadcast=True)

        def hear(self, step: RecipeStep, payload: Any) -> None:
            calls.append(payload)
            if payload == "fail":
                raise RuntimeError("cannot hear that")
            step.send(payload)

    recipe = Recipe({"1": {"topic": topic, "output": 2}, "2": {"queue": out}, "start": [[1, 0]]})
    runner = start_service(Listener(), retry_delay=RETRY_DELAY)
    sink = collector(ack_with=client)
    client.subscribe(out, sink)
    for payload in ("fail", "heard"):
        client.broadcast(
            topic, encode(recipe, 1, [], ENVIRONMENT, payload), headers={"workflows-recipe": True}
        )
    assert payloads(sink.wait_for_count(1)) == ["heard"]
    assert calls == ["fail", "heard"], "a failed broadcast is not retried"
    stats = runner.stats.snapshot()
    assert (stats["failed"], stats["retried"], stats["handled"]) == (1, 0, 1)
    assert "cannot hear that" in caplog.text


def test_exclusive_is_for_a_queue_and_shows_in_the_handler_description():
    from zocalo.service import handler

    with pytest.raises(ValueError, match="exclusive= is for a queue"):
        handler(topic="news", exclusive=True)

    class Alone(Service):
        @handler("alone", exclusive=True)
        def take(self, step, payload):
            pass

    (spec,) = Alone().handlers()
    assert spec.exclusive
    assert spec.describe().startswith("queue 'alone' (exclusive) -> ")
