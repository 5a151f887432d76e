"""A wrapper's status on ``transient.status``, as python-zocalo's ``zocalo.wrap`` sends it.

Broadcast at once, then at least every :data:`WRAPPER_STATUS_INTERVAL` seconds
and at every change: ``{host, task, workflows, zocalo, status, statustext}``
plus the extended fields (cluster job ids) and the recipe ID. A status that
cannot be sent (the broker is away for a moment) is skipped, never fatal: the
job's work matters more than its status line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from zocalo.service.status import (
    STATUS_EXPIRATION,
    STATUS_TOPIC,
    Status,
    host_id,
    zocalo_version,
)
from zocalo.transport.base import Transport

log = logging.getLogger("zocalo.wrapper.status")

#: Seconds between status broadcasts of a running wrapper (python-zocalo's).
WRAPPER_STATUS_INTERVAL = 3.0
#: Environment variables naming the batch job a wrapper runs in, and their status field.
CLUSTER_JOB_FIELDS = {
    "JOB_ID": "cluster_JOB_ID",
    "SGE_CELL": "cluster_SGE_CELL",
    "SLURM_JOB_ID": "cluster_SLURM_JOB_ID",
    "SLURM_CLUSTER_NAME": "cluster_SLURM_CLUSTER_NAME",
}


def extended_status_fields() -> dict[str, str]:
    """The zocalo version and the cluster job this process runs in, if any."""
    fields = {"zocalo": zocalo_version()}
    for variable, field in CLUSTER_JOB_FIELDS.items():
        if os.environ.get(variable):
            fields[field] = os.environ[variable]
    return fields


class WrapperStatus:
    """Broadcasts one wrapper's status from a thread of its own until :meth:`shutdown`.

    ``taskname`` (the wrapper's name, plus `` (<task_information>)``) may be
    changed while it runs, as python-zocalo's ``status_thread.taskname``.
    """

    def __init__(
        self,
        transport: Transport,
        taskname: str,
        *,
        interval: float = WRAPPER_STATUS_INTERVAL,
    ) -> None:
        self.transport = transport
        self.interval = interval
        self._lock = threading.Condition()
        self._fields: dict[str, Any] = {
            "host": host_id(),
            "task": taskname,
            "workflows": f"zocalo {zocalo_version()}",
            **extended_status_fields(),
        }
        self._changed = False
        self._running = False
        self._thread: threading.Thread | None = None
        self.set_status(Status.STARTING)

    # -- what is reported -----------------------------------------------------
    @property
    def taskname(self) -> str:
        with self._lock:
            return str(self._fields["task"])

    @taskname.setter
    def taskname(self, value: str) -> None:
        self._update(task=value)

    def set_status(self, status: Status) -> None:
        self._update(status=int(status), statustext=status.text)

    def set_static_status_field(self, field: str, value: Any) -> None:
        """Add a field to every status broadcast from now on."""
        self._update(**{field: value})

    def report(self) -> dict[str, Any]:
        """The status dict as it is broadcast."""
        with self._lock:
            return dict(self._fields)

    def _update(self, **fields: Any) -> None:
        with self._lock:
            self._fields.update(fields)
            self._changed = True
            self._lock.notify_all()

    # -- the thread ------------------------------------------------------------
    def start(self) -> None:
        """Broadcast now, then every ``interval`` seconds and on every change."""
        with self._lock:
            self._running = True
        self._thread = threading.Thread(target=self._run, name="zocalo-wrapper-status", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop broadcasting, after sending the last status (END, ERROR...)."""
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        self.broadcast()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._changed = False
            self.broadcast()
            with self._lock:
                self._lock.wait_for(lambda: self._changed or not self._running, self.interval)
                if not self._running:
                    return

    def broadcast(self) -> None:
        if not self.transport.connected:
            return
        try:
            self.transport.broadcast(
                STATUS_TOPIC,
                json.dumps(self.report(), default=str),
                expiration=STATUS_EXPIRATION,
                timeout=10,
            )
        except Exception as error:  # a status is never worth failing the job
            log.debug("could not broadcast the wrapper's status: %s", error)
