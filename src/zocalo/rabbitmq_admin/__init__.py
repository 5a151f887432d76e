"""Declarative RabbitMQ configuration through the management API (``zocalo.configure_rabbitmq``).

* :mod:`~zocalo.rabbitmq_admin.api`: a small management-API client.
* :mod:`~zocalo.rabbitmq_admin.topology`: python-zocalo's topology file -> desired state
  (the file's schema in :mod:`~zocalo.rabbitmq_admin.topology_file`, the state itself in
  :mod:`~zocalo.rabbitmq_admin.desired_state`).
* :mod:`~zocalo.rabbitmq_admin.plan`: desired vs current -> ordered changes (and safety
  checks), one module per concern.
* :mod:`~zocalo.rabbitmq_admin.apply`: carry a plan out.
"""

from __future__ import annotations

from zocalo.rabbitmq_admin.api import ManagementAPI, ManagementAPIError, hash_password
from zocalo.rabbitmq_admin.apply import RefusedError, apply_plan
from zocalo.rabbitmq_admin.plan import (
    DEFAULT_OWNER_TAG,
    Change,
    MissingPluginError,
    Plan,
    PlanError,
    make_plan,
)
from zocalo.rabbitmq_admin.topology import (
    DesiredState,
    TopologyError,
    load_users,
    parse_topology,
)

__all__ = [
    "DEFAULT_OWNER_TAG",
    "Change",
    "DesiredState",
    "ManagementAPI",
    "ManagementAPIError",
    "MissingPluginError",
    "Plan",
    "PlanError",
    "RefusedError",
    "TopologyError",
    "apply_plan",
    "hash_password",
    "load_users",
    "make_plan",
    "parse_topology",
]
