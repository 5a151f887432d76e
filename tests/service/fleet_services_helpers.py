"""Test helpers shared by the supervised-service tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from zocalo.transport import Delivery


class StatusWatch:
    """Collects status broadcasts; tests wait on them with deadlines."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.reports: list[dict[str, Any]] = []

    def __call__(self, delivery: Delivery) -> None:
        with self.condition:
            self.reports.append(json.loads(delivery.body))
            self.condition.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [report for report in self.reports if predicate(report)]
            return bool(found)

        with self.condition:
            if not self.condition.wait_for(seen, timeout):
                raise AssertionError(
                    f"no status report with {what} in {timeout}s; last: {self.reports[-3:]}"
                )
        return found[-1]
