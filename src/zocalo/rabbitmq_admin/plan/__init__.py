"""Compare the desired state with the broker and list the changes, in the order to apply them.

Scope (deliberately narrower than python-zocalo, which is authoritative across *every*
vhost): the tool only looks inside the vhosts the file names (explicitly, or through the
target-vhost default). Within those it is authoritative: policies, non-temporary queues
(not ``amq.*``, not auto-delete, not exclusive), exchanges (not ``""``/``amq.*``) and
bindings from non-``amq.*`` exchanges that the file does not declare are deleted.
Permissions are managed (in those vhosts) only when the file has a non-empty
``permissions`` list; the API user's own permissions are never removed.

Vhosts and users are deleted only if they carry the *owner tag* (default
``zocalo-managed``), which the tool adds to every vhost and user it creates or updates:
a vhost when the file has a non-empty ``vhosts`` list and does not name it, a user when
``--user-config`` is given and no file declares it. Users and vhosts without the tag
(``guest``, other applications' users, vhosts made by hand) are never deleted; ``/`` is
never touched; the API user is never deleted.

Safety: what running services use is left alone unless ``--force``: a queue with
consumers or messages (not deleted, nor recreated for a changed argument), a dead-letter
queue of a queue that stays, an exchange that routes to queues with consumers (a
subscriber's broadcasts), and the RabbitMQ transport's own delayed-delivery topology
(``zocalo.delay.*``, see :mod:`zocalo.transport.rabbitmq.delay`). The plan lists them as
kept. Deleting a vhost, or a queue whose message count the management statistics cannot
tell yet, needs ``--force``. Queue and exchange properties are immutable in RabbitMQ, so
a changed argument shows as delete + create.

One module per concern: :mod:`.changes` (a plan as data and as text),
:mod:`.context` (what the planning steps share), :mod:`.access` (vhosts, users,
permissions), :mod:`.routing` (policies, exchanges, queues, bindings) and
:mod:`.in_use` (the safety rules above). :func:`make_plan` runs the steps in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zocalo.rabbitmq_admin.plan.access import plan_permissions, plan_users, plan_vhosts
from zocalo.rabbitmq_admin.plan.changes import SYMBOLS, Change, Plan
from zocalo.rabbitmq_admin.plan.context import (
    DEFAULT_OWNER_TAG,
    MissingPluginError,
    PlanError,
    Planning,
)
from zocalo.rabbitmq_admin.plan.routing import (
    check_plugins,
    plan_bindings,
    plan_exchanges,
    plan_policies,
    plan_queues,
)

if TYPE_CHECKING:
    from zocalo.rabbitmq_admin.api import ManagementAPI
    from zocalo.rabbitmq_admin.desired_state import DesiredState

__all__ = [
    "DEFAULT_OWNER_TAG",
    "SYMBOLS",
    "Change",
    "MissingPluginError",
    "Plan",
    "PlanError",
    "make_plan",
]


def make_plan(
    api: ManagementAPI,
    desired: DesiredState,
    *,
    skip_missing_plugins: bool = False,
    owner_tag: str = DEFAULT_OWNER_TAG,
    stats_wait: float = 10.0,
    force: bool = False,
) -> Plan:
    """Read the broker's state in the managed vhosts and list the changes ``desired`` needs.

    Raises :class:`MissingPluginError` for exchange types the broker lacks (unless
    ``skip_missing_plugins``: then a warning, and those exchanges and their bindings are
    left out) and :class:`PlanError` for vhosts that neither exist nor are declared.
    ``stats_wait``: how long to wait for the statistics of a queue to be deleted.
    ``force``: plan the deletion (or recreation) of what is in use too, instead of keeping it.
    """
    planning = Planning(api, desired, owner_tag=owner_tag, stats_wait=stats_wait, force=force)
    exchanges, bindings, skipped = check_plugins(planning, skip_missing=skip_missing_plugins)
    existing = plan_vhosts(planning)
    plan_users(planning)
    for vhost in desired.managed_vhosts:
        exists = vhost in existing
        plan_permissions(planning, vhost, exists)
        plan_policies(planning, vhost, exists)
        removed_exchanges = plan_exchanges(planning, vhost, exists, exchanges, skipped)
        removed_queues = plan_queues(planning, vhost, exists, desired.queues)
        plan_bindings(planning, vhost, exists, bindings, removed_exchanges, removed_queues)
    planning.plan.changes.sort(key=lambda change: change.stage)
    return planning.plan
