"""Schlockmeister: watches every dead-letter queue, keeps each dead letter, and raises one
alert per new way of failing.

Every ``dlq.*`` queue of the broker is consumed (new ones are found by listing the queues
every ``scan_interval`` seconds, 5 by default), so a message dead-lettered by our runner,
by the embedded broker or by RabbitMQ after its delivery limit is seen at once, or within
``scan_interval`` in a queue that held no dead letter before; on every transport. For
each dead letter Schlockmeister

1. writes it to a file, exactly as ``zocalo.dlq_purge`` does (same place, same layout:
   ``zocalo.dlq_reinject`` takes it, and an operator can edit it first);
2. records it in ``dead-letters.db`` beside the files, in the group of dead letters that
   failed the same way (:mod:`zocalo.dlq.fingerprint`), and logs one line
   ``dead letter: {...}`` (JSON: queue, step, recipe ID, reason, group, file) carrying the
   recipe ID;
3. for a group seen for the first time, raises an alert: a log line at ERROR, a broadcast
   on :data:`ALERT_TOPIC`, and, when ``mail_to`` is set, a mail through the Mailer;
4. acknowledges it, in one atomic publish with the alert broadcast, only once file and
   record are on disk. Delivered again after a crash, it is recognised (same file, same
   record) and counted once; an alert that was not confirmed is raised again.

``zocalo dlq list`` shows the groups, ``zocalo dlq reinject --group ID`` sends a whole
group back. The dead letters leave their queues: ``zocalo.dlq_check`` finds them empty
while Schlockmeister runs.

The runner hands a handler decoded messages and dead-letters what it cannot decode,
which for a dead letter would mean into its own queue; so Schlockmeister consumes the
dead-letter queues itself, on a connection of its own to the broker its settings name
(``transport_url``, else ``$ZOCALO_TRANSPORT``, which ``zocalo.service`` sets to its own
broker, else the site configuration's, else the embedded broker: the rule every tool
follows). Its site configuration (:attr:`~zocalo.service.Service.site_config`) names
where dead letters are kept (``zocalo.dlq.purge_location``) and who is mailed
(``zocalo.schlockmeister.mail_to``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from zocalo.dlq.files import export
from zocalo.dlq.fingerprint import DeadLetterFacts, facts
from zocalo.dlq.listing import QueueListing, queue_listing
from zocalo.dlq.record import DeadLetterRecord, Group, default_location
from zocalo.errors import ZocaloError
from zocalo.logs import recipe_context
from zocalo.service import Service
from zocalo.transport import Delivery, Outgoing, Transport, create_transport
from zocalo.transport.registry import resolve_broker_url

log = logging.getLogger("zocalo.service.Schlockmeister")

#: Where a new group is announced (JSON: the group and the dead letter that opened it).
ALERT_TOPIC = "zocalo.dlq.alerts"
#: The Mailer's queue, and the storage key listing who is mailed about new groups.
MAIL_QUEUE = "mailnotification"
MAIL_TO_KEY = "zocalo.schlockmeister.mail_to"
#: Seconds between listings of the broker's queues (a new dead-letter queue is watched
#: from the next one; a queue already watched delivers at once).
SCAN_INTERVAL = 5.0
#: Longest pause after a dead letter could not be kept (disk full...), before the next try.
MAX_BACKOFF = 60.0


class Schlockmeister(Service):
    """Keeps every dead letter, grouped by how it failed; alerts once per new group."""

    name = "Schlockmeister"

    def __init__(
        self,
        transport_url: str | None = None,
        *,
        location: Path | str | None = None,
        scan_interval: float = SCAN_INTERVAL,
        mail_to: list[str] | str | None = None,
        management_url: str | None = None,
    ) -> None:
        super().__init__()
        self._url = transport_url
        self._location = Path(location) if location is not None else None
        self.scan_interval = scan_interval
        self._mail_to = mail_to
        self._management_url = management_url
        self._arrived: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._watched: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._transport: Transport | None = None
        self._listing: QueueListing | None = None
        self._record: DeadLetterRecord | None = None
        #: Dead letters kept, and groups alerted, since the start.
        self.kept = 0
        self.alerts = 0

    # -- lifecycle ---------------------------------------------------------------------
    def initializing(self) -> None:
        site = self.site_config
        url = resolve_broker_url(self._url, site)
        self.location = self._location or default_location(site.storage)
        mail_to = self._mail_to or site.storage.get(MAIL_TO_KEY) or []
        self.mail_to = [mail_to] if isinstance(mail_to, str) else list(mail_to)
        self._record = DeadLetterRecord(self.location)
        self._transport = create_transport(url)
        self._transport.connect()
        self._listing = queue_listing(
            url,
            self._transport,
            management_url=self._management_url,
            rabbitmq_api=site.plugins.get("rabbitmqapi"),
        )
        self.scan()
        for target, name in ((self._scan_forever, "scan"), (self._keep_forever, "keep")):
            thread = threading.Thread(target=target, name=f"schlockmeister-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("keeping dead letters in %s", self.location)

    def stopping(self) -> None:
        self._stop.set()
        self._arrived.put(None)
        for thread in self._threads:
            thread.join(30)
        if self._transport is not None:
            self._transport.close()  # what was delivered and not kept goes back
        if self._listing is not None:
            self._listing.close()
        if self._record is not None:
            self._record.close()

    # -- finding dead-letter queues ----------------------------------------------------------
    def scan(self) -> list[str]:
        """Consume every dead-letter queue not consumed yet; the ones added."""
        assert self._listing is not None and self._transport is not None
        try:
            names = [
                name for name in self._listing.dead_letter_queues() if name not in self._watched
            ]
        except ZocaloError as error:
            log.warning("cannot list the dead-letter queues (trying again later): %s", error)
            return []
        for name in names:
            self._transport.subscribe(name, self._arrived.put, prefetch=1)
            self._watched.add(name)
            log.info("watching %s", name)
        return names

    def _scan_forever(self) -> None:
        while not self._stop.wait(self.scan_interval):
            try:
                self.scan()
            except ZocaloError as error:
                log.error("cannot watch a new dead-letter queue: %s", error)

    # -- keeping dead letters ---------------------------------------------------------------
    def _keep_forever(self) -> None:
        failures = 0
        while (delivery := self._arrived.get()) is not None:
            if self._stop.is_set():
                break  # not kept: it returns to its queue when the connection closes
            try:
                self.keep(delivery)
                failures = 0
            except Exception as error:  # a disk full, a broker away: try again later
                failures += 1
                pause = min(2.0 ** (failures - 1), MAX_BACKOFF)
                log.error(
                    "cannot keep %s (%s); it goes back to its queue, next try in %.0f s",
                    delivery.describe(),
                    error,
                    pause,
                )
                self._give_back(delivery)
                self._stop.wait(pause)

    def _give_back(self, delivery: Delivery) -> None:
        assert self._transport is not None
        try:
            self._transport.nack(delivery, requeue=True, reason="Schlockmeister could not keep it")
        except ZocaloError as error:
            log.warning("cannot return %s: %s", delivery.describe(), error)

    def keep(self, delivery: Delivery) -> None:
        """File, record, alert (once per new group), then acknowledge one dead letter."""
        assert self._record is not None and self._transport is not None
        about = facts(delivery.source, delivery.headers, delivery.body)
        exported = export(
            self.location,
            delivery.source,
            delivery.headers,
            delivery.body,
            delivery.message_id,
            redelivered=delivery.redelivered,
        )
        recorded = self._record.add(about, exported)
        group = recorded.group
        alert = not group.alerted
        outputs = [self._alert(group, about)] if alert else []
        self._transport.publish(outputs, ack=delivery).result(60)
        self.kept += recorded.new_letter
        with recipe_context(about.recipe_id, about.step):
            line = {**about.to_json(), "group": group.id, "file": str(exported.path)}
            log.warning("dead letter: %s", json.dumps(line, sort_keys=True))
            if alert:
                self._record.mark_alerted(group.id)
                self.alerts += 1
                log.error(
                    "new kind of dead letter, group %d: %s step %s: %s (zocalo dlq list)",
                    group.id,
                    group.queue,
                    group.step,
                    about.reason,
                )
                self._mail(group, about)

    def _alert(self, group: Group, about: DeadLetterFacts) -> Outgoing:
        body = {"group": group.to_json(), "dead_letter": about.to_json()}
        return Outgoing(ALERT_TOPIC, json.dumps(body).encode(), {}, broadcast=True)

    def _mail(self, group: Group, about: DeadLetterFacts) -> None:
        """Tell ``mail_to`` through the Mailer (a plain Mailer message); best effort."""
        if not self.mail_to or self._transport is None:
            return
        message: dict[str, Any] = {
            "parameters": {
                "recipients": self.mail_to,
                "subject": f"zocalo: new dead letters in {group.queue} (group {group.id})",
            },
            "content": (
                f"A new kind of dead letter (group {group.id}, fingerprint {group.fingerprint}):\n"
                f"queue: {group.queue}\nstep: {group.step}\nrecipe: {about.recipe_id}\n"
                f"reason: {about.reason}\n\n"
                f"zocalo dlq list; zocalo dlq reinject --group {group.id} once it is fixed.\n"
            ),
        }
        try:
            self._transport.send(MAIL_QUEUE, json.dumps(message), timeout=30)
        except (ZocaloError, TimeoutError) as error:
            log.warning("cannot mail the alert for group %d: %s", group.id, error)
