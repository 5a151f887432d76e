"""Services for the dead-letter round trip: a chain whose second step fails on a poison
job, and one that kills its own worker."""

from __future__ import annotations

import os

from zocalo import Service, handler


class Find(Service):
    """Step 1: passes every image on."""

    @handler("chain.find")
    def find(self, step, payload):
        step.send(payload)


class Record(Service):
    """Step 2: fails on a poison image, every time (the runner retries, then gives up)."""

    @handler("chain.record")
    def record(self, step, payload):
        if payload.get("poison"):
            raise RuntimeError(f"cannot record image {payload['image']}: detector mask missing")
        step.send(payload)


class Fragile(Service):
    """Dies with its worker on "kill" (no exception to catch): the broker's delivery limit
    is what stops that message."""

    @handler("fragile", allow_plain=True)
    def handle(self, step, payload):
        if payload == "kill":
            os._exit(3)
        step.send_plain("fragile.done", payload)
