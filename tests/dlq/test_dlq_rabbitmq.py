"""The dead-letter tools on what only RabbitMQ does: its own dead-lettering (x-death),
exchanges, and queues that do not exist."""

from __future__ import annotations

import json
import threading
from urllib.parse import unquote, urlsplit

import pytest
from dlq_helpers import one_error_line

from zocalo.cli.dlq_purge import command as dlq_purge
from zocalo.cli.dlq_reinject import command as dlq_reinject
from zocalo.rabbitmq_admin import ManagementAPI
from zocalo.transport import Outgoing, dlq_name

pytestmark = pytest.mark.rabbitmq


def returning(transport, times: int):
    """A callback that hands each delivery back to the queue, and an event set after
    ``times`` deliveries."""
    seen, enough = [], threading.Event()

    def callback(delivery):
        seen.append(delivery)
        transport.nack(delivery, requeue=True)
        if len(seen) >= times:
            enough.set()

    return callback, enough


def test_a_message_rabbitmq_dead_lettered_goes_back_and_arrives(
    rabbitmq_vhost_url, make_broker, run, tmp_path
):
    broker = make_broker(rabbitmq_vhost_url)
    queue = broker.queue("limited")
    limited = broker.connect(delivery_limit=2)
    limited.declare_queue(queue)
    limited.send(queue, b'{"poison": true}', headers={"mine": 1})
    callback, enough = returning(limited, 2)
    subscription = limited.subscribe(queue, callback)
    assert enough.wait(30)
    limited.unsubscribe(subscription)
    result = run(
        dlq_purge, "-t", rabbitmq_vhost_url, "--location", str(tmp_path), "--wait", "5", queue
    )
    assert f"Found 1 DLQ messages in {dlq_name(queue)}" in result.stdout, result.output
    (path,) = tmp_path.glob("*/msg-*")
    header = json.loads(path.read_text())["header"]
    death = header["x-death"][0]
    assert (death["queue"], death["reason"], death["exchange"]) == (queue, "delivery_limit", "")
    assert isinstance(death["time"], float), "epoch seconds, as python-zocalo writes them"
    result = run(dlq_reinject, "-t", rabbitmq_vhost_url, str(path))
    assert result.exit_code == 0, result.output
    # RabbitMQ drops a message whose x-death says it went round a dead-letter cycle:
    # it arrives because the reinjected message carries no x-death.
    (back,) = broker.take_all(queue)
    assert (back.body, back.headers["mine"], back.headers["dlq-reinjected"]) == (
        b'{"poison": true}',
        1,
        "True",
    )
    assert "x-death" not in back.headers


def test_a_message_that_came_through_a_fanout_exchange_goes_back_through_it(
    rabbitmq_vhost_url, make_broker, run, tmp_path
):
    broker = make_broker(rabbitmq_vhost_url)
    vhost = unquote(urlsplit(rabbitmq_vhost_url).path[1:])
    queue, exchange = broker.queue("bound"), broker.queue("fanout")
    api = ManagementAPI("http://127.0.0.1:15672", "guest", "guest")
    try:
        api.put_exchange(vhost, exchange, {"type": "fanout", "durable": True})
        api.put_queue(vhost, dlq_name(queue), {"durable": True})
        dead_lettering = {
            "x-queue-type": "quorum",
            "x-delivery-limit": 0,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq_name(queue),
        }
        api.put_queue(vhost, queue, {"durable": True, "arguments": dead_lettering})
        api.create_binding(vhost, exchange, "q", queue, "", {})
        client = broker.client
        client.broadcast(exchange, b"news")
        callback, enough = returning(client, 1)
        subscription = client.subscribe(queue, callback)
        assert enough.wait(30)
        client.unsubscribe(subscription)
        run(dlq_purge, "-t", rabbitmq_vhost_url, "--location", str(tmp_path), "--wait", "5", queue)
        (path,) = tmp_path.glob("*/msg-*")
        assert json.loads(path.read_text())["header"]["x-death"][0]["exchange"] == exchange
        result = run(dlq_reinject, "-t", rabbitmq_vhost_url, "--remove", str(path))
        expected = f"to exchange '{exchange}' with routing key '' (file removed)"
        assert expected in result.stdout, result.output
        assert [d.body for d in broker.take_all(queue)] == [b"news"]
    finally:
        api.delete_exchange(vhost, exchange)
        api.close()


def test_a_message_that_came_through_a_direct_exchange_goes_back_through_it(
    rabbitmq_vhost_url, make_broker, run, tmp_path
):
    """Bound under a routing key that is not its name, the queue gets the message back
    only through the exchange; a second queue bound alike getting a copy too shows
    it went through the exchange, not straight to the queue."""
    broker = make_broker(rabbitmq_vhost_url)
    vhost = unquote(urlsplit(rabbitmq_vhost_url).path[1:])
    queue, other, exchange = broker.queue("bound"), broker.queue("other"), broker.queue("ex")
    key = "images.ready"
    api = ManagementAPI("http://127.0.0.1:15672", "guest", "guest")
    try:
        api.put_exchange(vhost, exchange, {"type": "direct", "durable": True})
        api.put_queue(vhost, dlq_name(queue), {"durable": True})
        dead_lettering = {
            "x-queue-type": "quorum",
            "x-delivery-limit": 0,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq_name(queue),
        }
        api.put_queue(vhost, queue, {"durable": True, "arguments": dead_lettering})
        api.put_queue(vhost, other, {"durable": True})
        for bound in (queue, other):
            api.create_binding(vhost, exchange, "q", bound, key, {})
        client = broker.client
        client.publish([Outgoing(key, b"job", {"mine": 1}, exchange=exchange)]).result(30)
        assert [d.body for d in broker.take_all(other)] == [b"job"], "the first trip"
        callback, enough = returning(client, 1)
        subscription = client.subscribe(queue, callback)
        assert enough.wait(30)
        client.unsubscribe(subscription)
        run(dlq_purge, "-t", rabbitmq_vhost_url, "--location", str(tmp_path), "--wait", "5", queue)
        (path,) = tmp_path.glob("*/msg-*")
        header = json.loads(path.read_text())["header"]
        death = header["x-death"][0]
        assert (death["exchange"], death["routing-keys"], death["queue"]) == (
            exchange,
            [key],
            queue,
        )
        result = run(dlq_reinject, "-t", rabbitmq_vhost_url, "--remove", str(path))
        expected = f"to exchange '{exchange}' with routing key '{key}' (file removed)"
        assert expected in result.stdout, result.output
        assert not path.exists()
        (back,) = broker.take_all(queue)
        assert (back.body, back.headers["mine"], back.headers["dlq-reinjected"]) == (
            b"job",
            1,
            "True",
        )
        assert [d.body for d in broker.take_all(other)] == [b"job"], "through the exchange"
    finally:
        api.delete_exchange(vhost, exchange)
        api.close()


def test_a_message_whose_exchange_is_gone_keeps_its_file(
    rabbitmq_vhost_url, make_broker, run, tmp_path
):
    broker = make_broker(rabbitmq_vhost_url)
    queue = broker.queue("orphan")
    broker.client.declare_queue(queue)
    letter = tmp_path / "letter"
    death = {"queue": queue, "exchange": "gone.exchange", "routing-keys": ["k"]}
    letter.write_text(json.dumps({"header": {"x-death": [death]}, "message": 1}))
    result = run(dlq_reinject, "-t", rabbitmq_vhost_url, "--remove", str(letter))
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert line.startswith(f"Error: {letter}: not reinjected (the file is kept): ")
    assert "exchange 'gone.exchange' does not exist" in line
    assert letter.exists()
    assert broker.take_all(queue) == []


def test_a_message_the_broker_refuses_keeps_its_file(
    rabbitmq_vhost_url, make_broker, run, tmp_path
):
    broker = make_broker(rabbitmq_vhost_url)
    queue = broker.queue("kept")
    broker.dead_letter(queue, [b"1", b"2"])
    run(dlq_purge, "-t", rabbitmq_vhost_url, "--location", str(tmp_path), queue)
    files = sorted(tmp_path.glob("*/msg-*"))
    nowhere = broker.queue("nowhere")
    arguments = ["-t", rabbitmq_vhost_url, "--remove", "-d", nowhere, *map(str, files)]
    result = run(dlq_reinject, *arguments)
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line.startswith(f"Error: {files[0]}: not reinjected (the file is kept): ")
    assert "the queue does not exist" in line
    assert all(path.exists() for path in files)
