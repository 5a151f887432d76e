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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zocalo.rabbitmq_admin.api import ManagementAPI, hash_password, password_matches
from zocalo.rabbitmq_admin.topology import (
    PLUGIN_EXCHANGE_TYPES,
    BindingSpec,
    DesiredState,
    ExchangeSpec,
    QueueSpec,
)
from zocalo.service.status import COMMAND_QUEUE_PREFIX
from zocalo.transport.rabbitmq import delay as delays

DEFAULT_OWNER_TAG = "zocalo-managed"

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


class PlanError(Exception):
    """The configuration cannot be applied to this broker (e.g. a missing vhost)."""


class MissingPluginError(PlanError):
    """An exchange type the broker does not offer; the message names the plugin."""


@dataclass
class Change:
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


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _differences(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (missing = absent)."""
    changes = []
    for key in sorted(set(current) | set(desired)):
        if current.get(key, _ABSENT) != desired.get(key, _ABSENT):
            old = _show(current[key]) if key in current else "(absent)"
            new = _show(desired[key]) if key in desired else "(absent)"
            changes.append(f"{key} {old} -> {new}")
    return changes


_ABSENT = object()


def _temporary_queue(queue: dict[str, Any]) -> bool:
    name = queue.get("name", "")
    return (
        not name
        or name.startswith("amq.")
        or bool(queue.get("auto_delete"))
        or bool(queue.get("exclusive"))
    )


def _managed_exchange(name: str) -> bool:
    return bool(name) and not name.startswith("amq.")


def _delay_topology(name: str) -> bool:
    """Part of the RabbitMQ transport's own delayed-delivery exchanges and queues."""
    return name.startswith(f"{delays.PREFIX}.")


def _in_use(queue: dict[str, Any], messages: int | None) -> str | None:
    """Why deleting ``queue`` would hurt a running service (None: it would not)."""
    if str(queue.get("name", "")).startswith(COMMAND_QUEUE_PREFIX):
        return "is a supervisor's command queue (kept while it restarts its worker)"
    reasons = []
    consumers = int(queue.get("consumers") or 0)
    if consumers:
        reasons.append(f"{consumers} consumer{'s' if consumers != 1 else ''}")
    if messages:
        reasons.append(f"{messages} message{'s' if messages != 1 else ''}")
    return "has " + " and ".join(reasons) if reasons else None


class _Planner:
    def __init__(
        self,
        api: ManagementAPI,
        desired: DesiredState,
        *,
        skip_missing_plugins: bool,
        owner_tag: str,
        stats_wait: float,
        force: bool = False,
    ) -> None:
        self.api = api
        self.desired = desired
        self.force = force
        self.skip_missing_plugins = skip_missing_plugins
        self.owner_tag = owner_tag
        self.stats_wait = stats_wait
        self._stats_deadline: float | None = None
        self.plan = Plan(str(desired.source), api.base_url, desired.managed_vhosts)

    def add(self, change: Change) -> None:
        self.plan.changes.append(change)

    def keep_delay(self, kind: str, name: str) -> bool:
        """True (and counted as kept) if ``name`` is delay topology to leave alone."""
        if self.force or not _delay_topology(name):
            return False
        self.plan.kept_delay[kind] = self.plan.kept_delay.get(kind, 0) + 1
        return True

    # -- plugins -----------------------------------------------------------------------

    def check_plugins(self) -> tuple[list[ExchangeSpec], list[BindingSpec], set[tuple[str, str]]]:
        """The exchanges and bindings to manage, without those needing a missing plugin."""
        available = self.api.exchange_types()
        missing = [ex for ex in self.desired.exchanges if ex.type not in available]
        if missing and not self.skip_missing_plugins:
            lines = [
                f"exchange {ex.name!r} (vhost {ex.vhost}) has type {ex.type}, which needs the "
                f"RabbitMQ plugin {PLUGIN_EXCHANGE_TYPES.get(ex.type, 'that provides it')}"
                for ex in missing
            ]
            plugins = sorted({PLUGIN_EXCHANGE_TYPES.get(ex.type, ex.type) for ex in missing})
            raise MissingPluginError(
                "the broker lacks exchange types this configuration needs:\n  "
                + "\n  ".join(lines)
                + f"\nEnable {', '.join(plugins)} (rabbitmq-plugins enable "
                + " ".join(plugins)
                + "), or pass --skip-missing-plugins to leave these exchanges out."
            )
        skipped = {(ex.vhost, ex.name) for ex in missing}
        for ex in missing:
            plugin = PLUGIN_EXCHANGE_TYPES.get(ex.type, "that provides it")
            self.plan.warnings.append(
                f"skipping exchange {ex.name!r} (vhost {ex.vhost}) and its bindings: type "
                f"{ex.type} needs the RabbitMQ plugin {plugin}, which is not enabled"
            )
        exchanges = [ex for ex in self.desired.exchanges if (ex.vhost, ex.name) not in skipped]
        bindings = [
            binding
            for binding in self.desired.bindings
            if (binding.vhost, binding.source) not in skipped
            and not (
                binding.destination_type == "exchange"
                and (binding.vhost, binding.destination) in skipped
            )
        ]
        return exchanges, bindings, skipped

    # -- vhosts and users --------------------------------------------------------------

    def with_owner(self, tags: tuple[str, ...]) -> list[str]:
        return list(dict.fromkeys([*tags, self.owner_tag]))

    def plan_vhosts(self) -> set[str]:
        """Plan vhost changes; return the managed vhosts that exist or will."""
        existing = {vhost["name"]: vhost for vhost in self.api.vhosts()}
        declared = {spec.name: spec for spec in self.desired.vhosts}
        for spec in self.desired.vhosts:
            tags = self.with_owner(spec.tags)
            body = {"description": spec.description, "tags": sorted(tags), "tracing": spec.tracing}

            def put(api: ManagementAPI, spec=spec, tags=tags) -> None:
                api.put_vhost(spec.name, spec.description, tags, spec.tracing)

            current = existing.get(spec.name)
            if current is None:
                self.add(Change("create", "vhost", spec.name, None, _show(body), VHOSTS, put))
                continue
            now = {
                "description": current.get("description", "") or "",
                "tags": sorted(current.get("tags") or []),
                "tracing": bool(current.get("tracing")),
            }
            if now != body:
                reason = "; ".join(_differences(now, body))
                self.add(Change("update", "vhost", spec.name, None, reason, VHOSTS, put))
        if self.desired.vhosts:
            for name, current in existing.items():
                if name == "/" or name in declared or name in self.desired.managed_vhosts:
                    continue
                if self.owner_tag not in (current.get("tags") or []):
                    continue
                self.add(
                    Change(
                        "delete",
                        "vhost",
                        name,
                        None,
                        f"tagged {self.owner_tag} but not in the configuration",
                        DELETE_VHOSTS,
                        lambda api, name=name: api.delete_vhost(name),
                        needs_force="deleting a vhost deletes everything in it",
                    )
                )
        missing = [
            name
            for name in self.desired.managed_vhosts
            if name not in existing and name not in declared
        ]
        if missing:
            raise PlanError(
                f"vhost(s) {', '.join(missing)} do not exist on {self.api.base_url}: declare "
                "them under 'vhosts:', create them, or choose another target with --vhost"
            )
        return set(self.desired.managed_vhosts) & set(existing)

    def plan_users(self) -> None:
        if self.desired.users is None:
            return
        existing = {user["name"]: user for user in self.api.users()}
        declared = {user.name for user in self.desired.users}
        for user in self.desired.users:
            tags = self.with_owner(user.tags)
            current = existing.get(user.name)
            if current is None:
                password_hash = hash_password(user.password)
                reason = f"from {user.source}, tags {','.join(tags)}"
                action = "create"
            else:
                reasons = []
                if password_matches(
                    user.password,
                    current.get("password_hash", ""),
                    current.get("hashing_algorithm", ""),
                ):
                    password_hash = current["password_hash"]
                else:
                    password_hash = hash_password(user.password)
                    reasons.append("password differs")
                current_tags = sorted(current.get("tags") or [])
                if current_tags != sorted(tags):
                    reasons.append(f"tags {','.join(current_tags) or '(none)'} -> {','.join(tags)}")
                if not reasons:
                    continue
                reason = f"from {user.source}: " + "; ".join(reasons)
                action = "update"

            def put(api: ManagementAPI, name=user.name, password_hash=password_hash, tags=tags):
                api.put_user(name, password_hash, tags)

            self.add(Change(action, "user", user.name, None, reason, USERS, put))
        for name, current in existing.items():
            if name in declared or name == self.api.username:
                continue
            if self.owner_tag not in (current.get("tags") or []):
                continue
            self.add(
                Change(
                    "delete",
                    "user",
                    name,
                    None,
                    f"tagged {self.owner_tag} but in no --user-config file",
                    DELETE_USERS,
                    lambda api, name=name: api.delete_user(name),
                )
            )

    # -- inside one vhost --------------------------------------------------------------

    def plan_permissions(self, vhost: str, exists: bool) -> None:
        if not self.desired.permissions:
            return
        current = {p["user"]: p for p in self.api.permissions(vhost)} if exists else {}
        desired = [p for p in self.desired.permissions if p.vhost == vhost]
        fields = ("configure", "write", "read")
        for spec in desired:
            body = {key: getattr(spec, key) for key in fields}

            def put(api: ManagementAPI, spec=spec) -> None:
                api.put_permission(spec.vhost, spec.user, spec.configure, spec.write, spec.read)

            now = current.get(spec.user)
            if now is None:
                self.add(
                    Change("create", "permission", spec.user, vhost, _show(body), PERMISSIONS, put)
                )
            elif {key: now.get(key) for key in fields} != body:
                reason = "; ".join(_differences({key: now.get(key) for key in fields}, body))
                self.add(Change("update", "permission", spec.user, vhost, reason, PERMISSIONS, put))
        wanted = {spec.user for spec in desired}
        for user in current:
            if user in wanted:
                continue
            if user == self.api.username:
                self.plan.warnings.append(
                    f"keeping the permissions of {user} (the API user) on vhost {vhost}, "
                    "although the configuration does not list them"
                )
                continue
            self.add(
                Change(
                    "delete",
                    "permission",
                    user,
                    vhost,
                    "not in the configuration",
                    DELETE_PERMISSIONS,
                    lambda api, user=user: api.delete_permission(vhost, user),
                )
            )

    def plan_policies(self, vhost: str, exists: bool) -> None:
        current = {p["name"]: p for p in self.api.policies(vhost)} if exists else {}
        desired = {p.name: p for p in self.desired.policies if p.vhost == vhost}
        for name, spec in desired.items():
            body = spec.body()

            def put(api: ManagementAPI, spec=spec) -> None:
                api.put_policy(spec.vhost, spec.name, spec.body())

            now = current.get(name)
            if now is None:
                self.add(Change("create", "policy", name, vhost, _show(body), POLICIES, put))
                continue
            now_body = {key: now.get(key) for key in body}
            if now_body != body:
                reason = "; ".join(_differences(now_body, body))
                self.add(Change("update", "policy", name, vhost, reason, POLICIES, put))
        for name in current:
            if name not in desired:
                self.add(
                    Change(
                        "delete",
                        "policy",
                        name,
                        vhost,
                        "not in the configuration",
                        DELETE_POLICIES,
                        lambda api, name=name: api.delete_policy(vhost, name),
                    )
                )

    def plan_exchanges(
        self, vhost: str, exists: bool, exchanges: list[ExchangeSpec], skipped: set
    ) -> set[str]:
        """Plan exchange changes; return the names of exchanges deleted (or recreated)."""
        current = {e["name"]: e for e in self.api.exchanges(vhost)} if exists else {}
        desired = {e.name: e for e in exchanges if e.vhost == vhost}
        routing = self.routes_to_consumers(vhost) if exists and not self.force else {}
        removed: set[str] = set()
        for name, spec in desired.items():

            def create(api: ManagementAPI, spec=spec) -> None:
                api.put_exchange(spec.vhost, spec.name, spec.body())

            now = current.get(name)
            if now is None:
                self.add(
                    Change(
                        "create",
                        "exchange",
                        name,
                        vhost,
                        _show(spec.body()),
                        CREATE_EXCHANGES,
                        create,
                    )
                )
                continue
            wanted = spec.body()
            have = {key: now.get(key) for key in wanted}
            differences = _differences(have, wanted)
            if not differences:
                continue
            reason = "properties are immutable: " + "; ".join(differences)
            if name in routing:
                self.plan.kept.append(
                    f"exchange {name} (vhost {vhost}): {routing[name]}; not recreated ({reason})"
                )
                continue
            removed.add(name)
            self.add(
                Change(
                    "delete",
                    "exchange",
                    name,
                    vhost,
                    f"to recreate it ({reason}); its bindings go with it",
                    DELETE_EXCHANGES,
                    lambda api, name=name: api.delete_exchange(vhost, name),
                )
            )
            self.add(
                Change(
                    "create",
                    "exchange",
                    name,
                    vhost,
                    f"recreate ({reason})",
                    CREATE_EXCHANGES,
                    create,
                )
            )
        for name in current:
            if name in desired or not _managed_exchange(name) or (vhost, name) in skipped:
                continue
            if self.keep_delay("exchange", name):
                continue
            if name in routing:
                self.plan.kept.append(f"exchange {name} (vhost {vhost}): {routing[name]}")
                continue
            removed.add(name)
            self.add(
                Change(
                    "delete",
                    "exchange",
                    name,
                    vhost,
                    "not in the configuration",
                    DELETE_EXCHANGES,
                    lambda api, name=name: api.delete_exchange(vhost, name),
                )
            )
        return removed

    def routes_to_consumers(self, vhost: str) -> dict[str, str]:
        """Exchanges bound to queues that have consumers (a live subscriber's broadcasts)
        or to a supervisor's command queue, each with why it is in use."""
        consumed = {
            q["name"]: int(q.get("consumers") or 0)
            for q in self.api.queues(vhost)
            if q.get("consumers") or str(q.get("name", "")).startswith(COMMAND_QUEUE_PREFIX)
        }  # a command queue waits for its supervisor's next worker
        queues: dict[str, set[str]] = {}
        for binding in self.api.bindings(vhost):
            destination = binding.get("destination", "")
            if (
                binding.get("source")
                and binding.get("destination_type") == "queue"
                and destination in consumed
            ):
                queues.setdefault(binding["source"], set()).add(destination)
        return {
            source: f"routes to {len(names)} queue{'s' if len(names) != 1 else ''} with consumers"
            for source, names in queues.items()
        }

    def message_count(self, vhost: str, queue: dict[str, Any]) -> int | None:
        """The queue's message count per the management statistics, waiting briefly for them.

        Fresh queues have no statistics for a few seconds; all queues share one deadline.
        """
        if self._stats_deadline is None:
            self._stats_deadline = time.monotonic() + self.stats_wait
        deadline = self._stats_deadline
        while True:
            count = queue.get("messages")
            if count is not None:
                return int(count)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
            refreshed = self.api.get_queue(vhost, queue["name"])
            if refreshed is None:
                return 0
            queue = refreshed

    def deletion_guard(self, vhost: str, queue: dict[str, Any]) -> tuple[str | None, str | None]:
        """(why deleting needs --force, why the queue is in use): either may be None.

        Without ``--force`` a queue in use is kept rather than planned for deletion.
        """
        count = self.message_count(vhost, queue)
        busy = _in_use(queue, count)
        if count is None:
            return "its message count is not known yet (no management statistics)", busy
        if count:
            return f"holds {count} message{'s' if count != 1 else ''}", busy
        return None, busy

    def plan_queues(self, vhost: str, exists: bool, queues: list[QueueSpec]) -> set[str]:
        """Plan queue changes; return the names of queues deleted (or recreated)."""
        current = {q["name"]: q for q in self.api.queues(vhost)} if exists else {}
        desired = {q.name: q for q in queues if q.vhost == vhost}
        removed: set[str] = set()
        for name, spec in desired.items():

            def create(api: ManagementAPI, spec=spec) -> None:
                api.put_queue(spec.vhost, spec.name, spec.body())

            now = current.get(name)
            if now is None:
                self.add(
                    Change(
                        "create", "queue", name, vhost, _show(spec.arguments), CREATE_QUEUES, create
                    )
                )
                continue
            wanted = spec.body()
            differences = _differences(
                {"durable": now.get("durable"), "auto_delete": now.get("auto_delete")},
                {"durable": wanted["durable"], "auto_delete": wanted["auto_delete"]},
            ) + [
                f"argument {difference}"
                for difference in _differences(now.get("arguments") or {}, spec.arguments)
            ]
            if not differences:
                continue
            reason = "arguments are immutable: " + "; ".join(differences)
            needs_force, busy = self.deletion_guard(vhost, now)
            if busy and not self.force:
                self.plan.kept.append(
                    f"queue {name} (vhost {vhost}): {busy}; not recreated ({reason})"
                )
                continue
            removed.add(name)
            self.add(
                Change(
                    "delete",
                    "queue",
                    name,
                    vhost,
                    f"to recreate it ({reason})",
                    DELETE_QUEUES,
                    lambda api, name=name: api.delete_queue(vhost, name),
                    needs_force=needs_force,
                )
            )
            self.add(
                Change(
                    "create", "queue", name, vhost, f"recreate ({reason})", CREATE_QUEUES, create
                )
            )
        # Dead-letter queues last: whether one is in use depends on the queues that stay.
        undeclared = sorted(
            (
                name
                for name, now in current.items()
                if name not in desired and not _temporary_queue(now)
            ),
            key=lambda name: name.startswith("dlq."),
        )
        for name in undeclared:
            now = current[name]
            if self.keep_delay("queue", name):
                continue
            needs_force, busy = self.deletion_guard(vhost, now)
            if busy is None and name.startswith("dlq."):
                busy = self.dead_letter_target(name, current, removed)
            if busy and not self.force:
                self.plan.kept.append(f"queue {name} (vhost {vhost}): {busy}")
                continue
            removed.add(name)
            self.add(
                Change(
                    "delete",
                    "queue",
                    name,
                    vhost,
                    "not in the configuration",
                    DELETE_QUEUES,
                    lambda api, name=name: api.delete_queue(vhost, name),
                    needs_force=needs_force,
                )
            )
        return removed

    @staticmethod
    def dead_letter_target(
        name: str, current: dict[str, dict[str, Any]], removed: set[str]
    ) -> str | None:
        """Why dead-letter queue ``name`` is in use: a queue that stays dead-letters to it."""
        for other, queue in current.items():
            if other in removed or other == name:
                continue
            target = (queue.get("arguments") or {}).get("x-dead-letter-routing-key")
            if target == name or (target is None and f"dlq.{other}" == name):
                return f"the dead-letter queue of queue {other}, which stays"
        return None

    def plan_bindings(
        self,
        vhost: str,
        exists: bool,
        bindings: list[BindingSpec],
        removed_exchanges: set[str],
        removed_queues: set[str],
    ) -> None:
        current = self.api.bindings(vhost) if exists else []
        queues = {q["name"]: q for q in self.api.queues(vhost)} if exists else {}

        def gone(source: str, destination_type: str, destination: str) -> bool:
            if source in removed_exchanges:
                return True
            if destination_type == "queue":
                return destination in removed_queues
            return destination in removed_exchanges

        present: set[tuple[Any, ...]] = set()
        for binding in current:
            source = binding.get("source", "")
            if not source:
                continue  # the default exchange's implicit bindings
            spec = BindingSpec(
                vhost,
                source,
                binding.get("destination_type", "queue"),
                binding.get("destination", ""),
                binding.get("routing_key", ""),
                binding.get("arguments") or {},
            )
            if gone(spec.source, spec.destination_type, spec.destination):
                continue  # deleted along with its exchange or queue
            present.add(spec.key())
        desired = [b for b in bindings if b.vhost == vhost]
        wanted = {b.key() for b in desired}
        for spec in desired:
            if spec.key() in present:
                continue

            def bind(api: ManagementAPI, spec=spec) -> None:
                api.create_binding(
                    spec.vhost,
                    spec.source,
                    spec.destination_type,
                    spec.destination,
                    spec.routing_key,
                    spec.arguments,
                )

            self.add(
                Change(
                    "create", "binding", spec.describe(), vhost, "in the configuration", BIND, bind
                )
            )
        for binding in current:
            source = binding.get("source", "")
            if not _managed_exchange(source):
                continue
            if self.keep_delay("binding", source):
                continue
            destination_type = binding.get("destination_type", "queue")
            destination = binding.get("destination", "")
            if gone(source, destination_type, destination):
                continue
            if destination_type == "queue":
                queue = queues.get(destination)
                if queue is None or _temporary_queue(queue):
                    continue  # live subscribers' bindings are not ours
            spec = BindingSpec(
                vhost,
                source,
                destination_type,
                destination,
                binding.get("routing_key", ""),
                binding.get("arguments") or {},
            )
            if spec.key() in wanted:
                continue
            busy = (
                _in_use(queues[destination], int(queues[destination].get("messages") or 0))
                if destination_type == "queue" and not self.force
                else None
            )
            if busy:
                kept = f"binding {spec.describe()} (vhost {vhost}): its queue {busy}"
                self.plan.kept.append(kept)
                continue
            properties_key = binding.get("properties_key", "")

            def unbind(api: ManagementAPI, spec=spec, properties_key=properties_key) -> None:
                api.delete_binding(
                    spec.vhost, spec.source, spec.destination_type, spec.destination, properties_key
                )

            self.add(
                Change(
                    "delete",
                    "binding",
                    spec.describe(),
                    vhost,
                    "not in the configuration",
                    UNBIND,
                    unbind,
                )
            )

    def run(self) -> Plan:
        exchanges, bindings, skipped = self.check_plugins()
        existing = self.plan_vhosts()
        self.plan_users()
        for vhost in self.desired.managed_vhosts:
            exists = vhost in existing
            self.plan_permissions(vhost, exists)
            self.plan_policies(vhost, exists)
            removed_exchanges = self.plan_exchanges(vhost, exists, exchanges, skipped)
            removed_queues = self.plan_queues(vhost, exists, self.desired.queues)
            self.plan_bindings(vhost, exists, bindings, removed_exchanges, removed_queues)
        self.plan.changes.sort(key=lambda change: change.stage)
        return self.plan


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
    return _Planner(
        api,
        desired,
        skip_missing_plugins=skip_missing_plugins,
        owner_tag=owner_tag,
        stats_wait=stats_wait,
        force=force,
    ).run()
