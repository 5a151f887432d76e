"""What every step of planning shares: the run's inputs, the plan it fills, its errors.

The steps (:mod:`~zocalo.rabbitmq_admin.plan.access` for vhosts, users and
permissions; :mod:`~zocalo.rabbitmq_admin.plan.routing` for policies, exchanges,
queues and bindings) are plain functions of one :class:`Planning`, so each reads
alone; this module is what they have in common, including how a difference is
worded in a change's reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zocalo.errors import AdminError
from zocalo.rabbitmq_admin.plan.changes import Change, Plan
from zocalo.rabbitmq_admin.plan.in_use import Usage, delay_topology

if TYPE_CHECKING:
    from zocalo.rabbitmq_admin.api import ManagementAPI
    from zocalo.rabbitmq_admin.desired_state import DesiredState

#: The tag the tool puts on every vhost and user it creates or updates; only those
#: carrying it are ever deleted.
DEFAULT_OWNER_TAG = "zocalo-managed"


class PlanError(AdminError):
    """The configuration cannot be applied to this broker (e.g. a missing vhost)."""


class MissingPluginError(PlanError):
    """An exchange type the broker does not offer; the message names the plugin."""


class Planning:
    """One planning run: what is asked, of which broker, how boldly, and the plan so far."""

    def __init__(
        self,
        api: ManagementAPI,
        desired: DesiredState,
        *,
        owner_tag: str,
        stats_wait: float,
        force: bool,
    ) -> None:
        self.api = api
        self.desired = desired
        self.owner_tag = owner_tag
        #: Plan the deletion (or recreation) of what is in use too, instead of keeping it.
        self.force = force
        self.usage = Usage(api, stats_wait)
        self.plan = Plan(str(desired.source), api.base_url, desired.managed_vhosts)

    def add(self, change: Change) -> None:
        self.plan.changes.append(change)

    def recreate(
        self,
        kind: str,
        name: str,
        vhost: str,
        reason: str,
        steps: tuple[Callable[[ManagementAPI], None], Callable[[ManagementAPI], None]],
        stages: tuple[int, int],
        *,
        consequence: str = "",
        needs_force: str | None = None,
    ) -> None:
        """Plan deleting ``name`` and creating it anew, both saying why (``reason``)."""
        delete, create = steps
        delete_stage, create_stage = stages
        self.add(
            Change(
                "delete",
                kind,
                name,
                vhost,
                f"to recreate it ({reason}){consequence}",
                delete_stage,
                delete,
                needs_force=needs_force,
            )
        )
        self.add(Change("create", kind, name, vhost, f"recreate ({reason})", create_stage, create))

    def keep_delay(self, kind: str, name: str) -> bool:
        """True (and counted as kept) if ``name`` is delay topology to leave alone."""
        if self.force or not delay_topology(name):
            return False
        self.plan.kept_delay[kind] = self.plan.kept_delay.get(kind, 0) + 1
        return True

    def with_owner(self, tags: tuple[str, ...]) -> list[str]:
        return list(dict.fromkeys([*tags, self.owner_tag]))


def show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


_ABSENT = object()


def describe_differences(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (missing = absent)."""
    changes = []
    for key in sorted(set(current) | set(desired)):
        if current.get(key, _ABSENT) != desired.get(key, _ABSENT):
            old = show(current[key]) if key in current else "(absent)"
            new = show(desired[key]) if key in desired else "(absent)"
            changes.append(f"{key} {old} -> {new}")
    return changes
