"""A plan as data and as text: the changes, the stage each runs in, and how they read.

Apart from the planning (which reads the broker to decide the changes) and from
:mod:`~zocalo.rabbitmq_admin.apply` (which carries them out) because both, and the
command's ``--dry-run``, share this one description: a change's text in the dry
run is the text printed when it is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zocalo.transport.rabbitmq import delay as delays

if TYPE_CHECKING:
    from zocalo.rabbitmq_admin.api import ManagementAPI

#: How each action is marked in the plan's text.
SYMBOLS = {"create": "+", "update": "~", "delete": "-"}

# Stages: creations/updates first, then deletions that make room for recreations, then the
# (re)creations, then the remaining deletions (vhosts last of all).
(
    VHOSTS,
    USERS,
    PERMISSIONS,
    POLICIES,
    UNBIND,
    DELETE_QUEUES,
    DELETE_EXCHANGES,
    CREATE_EXCHANGES,
    CREATE_QUEUES,
    BIND,
    DELETE_POLICIES,
    DELETE_PERMISSIONS,
    DELETE_USERS,
    DELETE_VHOSTS,
) = range(14)


@dataclass
class Change:
    """One call to the management API, with why it is needed and when it runs."""

    action: str  # create, update, delete
    kind: str  # vhost, user, permission, policy, exchange, queue, binding
    name: str
    vhost: str | None
    reason: str
    stage: int
    operation: Callable[[ManagementAPI], None] = field(repr=False)
    needs_force: str | None = None

    def describe(self) -> str:
        where = f" (vhost {self.vhost})" if self.vhost is not None else ""
        text = f"{SYMBOLS[self.action]} {self.action} {self.kind} {self.name}{where}: {self.reason}"
        if self.needs_force:
            text += f" [needs --force: {self.needs_force}]"
        return text


@dataclass
class Plan:
    """Every change a configuration needs, in the order to apply them, and what is kept."""

    source: str
    api_url: str
    managed_vhosts: list[str]
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What the configuration would delete or recreate but is in use: left alone.
    kept: list[str] = field(default_factory=list)
    #: Objects of the transport's delay topology left alone, by kind.
    kept_delay: dict[str, int] = field(default_factory=dict)

    @property
    def blocked(self) -> list[Change]:
        return [change for change in self.changes if change.needs_force]

    def render(self) -> str:
        return "\n".join([self._render_changes(), *self._render_kept()])

    def _render_kept(self) -> list[str]:
        lines = [f"  = keep {what}" for what in self.kept]
        if self.kept_delay:
            counts = ", ".join(f"{n} {kind}(s)" for kind, n in sorted(self.kept_delay.items()))
            lines.append(
                f"  = keep zocalo's delayed-delivery topology ({delays.PREFIX}.*: {counts}): "
                "used by the RabbitMQ transport"
            )
        if lines:
            lines.insert(
                0,
                "Kept although the configuration does not match (in use; --force "
                "to delete or recreate them):",
            )
        return lines

    def _render_changes(self) -> str:
        scope = ", ".join(self.managed_vhosts) or "(none)"
        if not self.changes:
            return f"No changes: {self.api_url} already matches {self.source} (vhosts: {scope})."
        lines = [f"Changes to {self.api_url} for {self.source} (vhosts: {scope}):"]
        lines += [f"  {change.describe()}" for change in self.changes]
        counts = {action: 0 for action in SYMBOLS}
        for change in self.changes:
            counts[change.action] += 1
        summary = (
            f"{len(self.changes)} change(s): {counts['create']} to create, "
            f"{counts['update']} to update, {counts['delete']} to delete"
        )
        if self.blocked:
            summary += f"; {len(self.blocked)} need --force"
        lines.append(summary + ".")
        return "\n".join(lines)
