"""Carry out a :class:`~zocalo.rabbitmq_admin.plan.Plan`."""

from __future__ import annotations

from collections.abc import Callable

from zocalo.errors import AdminError
from zocalo.rabbitmq_admin.api import ManagementAPI
from zocalo.rabbitmq_admin.plan import Change, Plan


class RefusedError(AdminError):
    """A change needs ``--force``; the message lists what and why."""


def refusal(changes: list[Change]) -> str:
    lines = [f"refusing to apply: {len(changes)} change(s) need --force:"]
    lines += [f"  {change.describe()}" for change in changes]
    lines.append("Nothing was changed. Re-run with --force to apply them anyway.")
    return "\n".join(lines)


def apply_plan(
    api: ManagementAPI,
    plan: Plan,
    *,
    force: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> int:
    """Apply every change in order; return how many were applied.

    Without ``force`` nothing is applied if any change needs it. Just before deleting a
    queue (without ``force``) its message and consumer counts are read again, so a queue
    that received messages or a consumer since planning stops the run there
    (:class:`RefusedError`).
    """
    if plan.blocked and not force:
        raise RefusedError(refusal(plan.blocked))
    applied = 0
    for change in plan.changes:
        if change.kind == "queue" and change.action == "delete" and not force:
            queue = api.get_queue(change.vhost or "/", change.name) or {}
            count, consumers = queue.get("messages"), queue.get("consumers")
            if count or consumers:
                raise RefusedError(
                    f"refusing to delete queue {change.name} (vhost {change.vhost}): it now "
                    f"holds {count or 0} message(s) and has {consumers or 0} consumer(s). "
                    f"{applied} change(s) were applied before stopping; re-run (with --force "
                    "to delete it anyway)."
                )
        change.operation(api)
        applied += 1
        report(change.describe())
    return applied
