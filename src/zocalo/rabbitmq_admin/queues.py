"""Queue depths of a RabbitMQ vhost through the management API (``zocalo queues``).

AMQP itself can only tell the depth of a queue one knows the name of (a passive
declare), and not its unacknowledged messages; the management API lists every
queue of a vhost with its ready and unacknowledged messages and its consumers.
"""

from __future__ import annotations

from zocalo.rabbitmq_admin.api import ManagementAPI
from zocalo.transport.base import QueueStats
from zocalo.transport.rabbitmq import delay as delays

#: The row standing for every message waiting in the delay topology's wait queues.
DELAYED_ROW = f"{delays.PREFIX}.*"


def queue_stats(api: ManagementAPI, vhost: str) -> list[QueueStats]:
    """Every queue of ``vhost`` (empty ones and those with only consumers included).

    A broadcast subscriber's exclusive queue is left out. The delay topology's wait
    queues are one row, :data:`DELAYED_ROW`, their messages counted as delayed (which
    queue each is for is in its routing key, which the API does not show).
    """
    stats: list[QueueStats] = []
    waiting = 0
    for queue in api.queues(vhost):
        name = queue.get("name", "")
        if queue.get("exclusive"):
            continue
        ready = int(queue.get("messages_ready") or 0)
        unacked = int(queue.get("messages_unacknowledged") or 0)
        if name.startswith(f"{delays.PREFIX}."):
            waiting += ready + unacked
            continue
        stats.append(QueueStats(name, ready, 0, unacked, int(queue.get("consumers") or 0)))
    if waiting:
        stats.append(QueueStats(DELAYED_ROW, 0, waiting, 0))
    return sorted(stats, key=lambda entry: entry.queue)
