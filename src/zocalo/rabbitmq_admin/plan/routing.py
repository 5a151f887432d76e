"""Plan what routes messages inside each managed vhost: policies, exchanges, queues, bindings.

Within a managed vhost the file is authoritative: what it does not declare goes,
except what :mod:`~zocalo.rabbitmq_admin.plan.in_use` says running services use
(kept unless ``--force``). Queue and exchange properties are immutable in RabbitMQ,
so a changed one is a delete and a create; the exchanges and queues deleted are
returned, so their bindings (which go with them) are not planned twice.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from zocalo.rabbitmq_admin.api import ManagementAPI
from zocalo.rabbitmq_admin.desired_state import BindingSpec, ExchangeSpec, QueueSpec
from zocalo.rabbitmq_admin.plan.changes import (
    BIND,
    CREATE_EXCHANGES,
    CREATE_QUEUES,
    DELETE_EXCHANGES,
    DELETE_POLICIES,
    DELETE_QUEUES,
    POLICIES,
    UNBIND,
    Change,
)
from zocalo.rabbitmq_admin.plan.context import (
    MissingPluginError,
    Planning,
    describe_differences,
    show,
)
from zocalo.rabbitmq_admin.plan.in_use import (
    dead_letter_target,
    managed_exchange,
    temporary_queue,
    why_in_use,
)
from zocalo.rabbitmq_admin.topology_file import PLUGIN_EXCHANGE_TYPES


def check_plugins(
    planning: Planning, *, skip_missing: bool
) -> tuple[list[ExchangeSpec], list[BindingSpec], set[tuple[str, str]]]:
    """The exchanges and bindings to manage, without those needing a missing plugin.

    A missing plugin is an error, unless ``skip_missing``: then a warning, and the
    exchanges of its type (and their bindings) are left out, listed in ``skipped``.
    """
    available = planning.api.exchange_types()
    missing = [ex for ex in planning.desired.exchanges if ex.type not in available]
    if missing and not skip_missing:
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
        planning.plan.warnings.append(
            f"skipping exchange {ex.name!r} (vhost {ex.vhost}) and its bindings: type "
            f"{ex.type} needs the RabbitMQ plugin {plugin}, which is not enabled"
        )
    exchanges = [ex for ex in planning.desired.exchanges if (ex.vhost, ex.name) not in skipped]
    bindings = [
        binding
        for binding in planning.desired.bindings
        if (binding.vhost, binding.source) not in skipped
        and not (
            binding.destination_type == "exchange"
            and (binding.vhost, binding.destination) in skipped
        )
    ]
    return exchanges, bindings, skipped


def plan_policies(planning: Planning, vhost: str, exists: bool) -> None:
    current = {p["name"]: p for p in planning.api.policies(vhost)} if exists else {}
    desired = {p.name: p for p in planning.desired.policies if p.vhost == vhost}
    for name, spec in desired.items():
        body = spec.body()

        def put(api: ManagementAPI, spec=spec) -> None:
            api.put_policy(spec.vhost, spec.name, spec.body())

        now = current.get(name)
        if now is None:
            planning.add(Change("create", "policy", name, vhost, show(body), POLICIES, put))
            continue
        now_body = {key: now.get(key) for key in body}
        if now_body != body:
            reason = "; ".join(describe_differences(now_body, body))
            planning.add(Change("update", "policy", name, vhost, reason, POLICIES, put))
    for name in current:
        if name not in desired:
            planning.add(
                Change(
                    "delete",
                    "policy",
                    name,
                    vhost,
                    "not in the configuration",
                    DELETE_POLICIES,
                    partial(ManagementAPI.delete_policy, vhost=vhost, name=name),
                )
            )


def plan_exchanges(
    planning: Planning, vhost: str, exists: bool, exchanges: list[ExchangeSpec], skipped: set
) -> set[str]:
    """Plan exchange changes; return the names of exchanges deleted (or recreated)."""
    current = {e["name"]: e for e in planning.api.exchanges(vhost)} if exists else {}
    desired = {e.name: e for e in exchanges if e.vhost == vhost}
    routing = planning.usage.routes_to_consumers(vhost) if exists and not planning.force else {}
    removed: set[str] = set()
    for name, spec in desired.items():

        def create(api: ManagementAPI, spec=spec) -> None:
            api.put_exchange(spec.vhost, spec.name, spec.body())

        now = current.get(name)
        if now is None:
            planning.add(
                Change(
                    "create",
                    "exchange",
                    name,
                    vhost,
                    show(spec.body()),
                    CREATE_EXCHANGES,
                    create,
                )
            )
            continue
        wanted = spec.body()
        have = {key: now.get(key) for key in wanted}
        differences = describe_differences(have, wanted)
        if not differences:
            continue
        reason = "properties are immutable: " + "; ".join(differences)
        if name in routing:
            planning.plan.kept.append(
                f"exchange {name} (vhost {vhost}): {routing[name]}; not recreated ({reason})"
            )
            continue
        removed.add(name)
        planning.recreate(
            "exchange",
            name,
            vhost,
            reason,
            (partial(ManagementAPI.delete_exchange, vhost=vhost, name=name), create),
            (DELETE_EXCHANGES, CREATE_EXCHANGES),
            consequence="; its bindings go with it",
        )
    for name in current:
        if name in desired or not managed_exchange(name) or (vhost, name) in skipped:
            continue
        if planning.keep_delay("exchange", name):
            continue
        if name in routing:
            planning.plan.kept.append(f"exchange {name} (vhost {vhost}): {routing[name]}")
            continue
        removed.add(name)
        planning.add(
            Change(
                "delete",
                "exchange",
                name,
                vhost,
                "not in the configuration",
                DELETE_EXCHANGES,
                partial(ManagementAPI.delete_exchange, vhost=vhost, name=name),
            )
        )
    return removed


def plan_queues(planning: Planning, vhost: str, exists: bool, queues: list[QueueSpec]) -> set[str]:
    """Plan queue changes; return the names of queues deleted (or recreated)."""
    current = {q["name"]: q for q in planning.api.queues(vhost)} if exists else {}
    desired = {q.name: q for q in queues if q.vhost == vhost}
    removed: set[str] = set()
    for name, spec in desired.items():

        def create(api: ManagementAPI, spec=spec) -> None:
            api.put_queue(spec.vhost, spec.name, spec.body())

        now = current.get(name)
        if now is None:
            planning.add(
                Change("create", "queue", name, vhost, show(spec.arguments), CREATE_QUEUES, create)
            )
            continue
        wanted = spec.body()
        differences = describe_differences(
            {"durable": now.get("durable"), "auto_delete": now.get("auto_delete")},
            {"durable": wanted["durable"], "auto_delete": wanted["auto_delete"]},
        ) + [
            f"argument {difference}"
            for difference in describe_differences(now.get("arguments") or {}, spec.arguments)
        ]
        if not differences:
            continue
        reason = "arguments are immutable: " + "; ".join(differences)
        needs_force, busy = planning.usage.deletion_guard(vhost, now)
        if busy and not planning.force:
            planning.plan.kept.append(
                f"queue {name} (vhost {vhost}): {busy}; not recreated ({reason})"
            )
            continue
        removed.add(name)
        planning.recreate(
            "queue",
            name,
            vhost,
            reason,
            (partial(ManagementAPI.delete_queue, vhost=vhost, name=name), create),
            (DELETE_QUEUES, CREATE_QUEUES),
            needs_force=needs_force,
        )
    # Dead-letter queues last: whether one is in use depends on the queues that stay.
    undeclared = sorted(
        (name for name, now in current.items() if name not in desired and not temporary_queue(now)),
        key=lambda name: name.startswith("dlq."),
    )
    for name in undeclared:
        now = current[name]
        if planning.keep_delay("queue", name):
            continue
        needs_force, busy = planning.usage.deletion_guard(vhost, now)
        if busy is None and name.startswith("dlq."):
            busy = dead_letter_target(name, current, removed)
        if busy and not planning.force:
            planning.plan.kept.append(f"queue {name} (vhost {vhost}): {busy}")
            continue
        removed.add(name)
        planning.add(
            Change(
                "delete",
                "queue",
                name,
                vhost,
                "not in the configuration",
                DELETE_QUEUES,
                partial(ManagementAPI.delete_queue, vhost=vhost, name=name),
                needs_force=needs_force,
            )
        )
    return removed


def plan_bindings(
    planning: Planning,
    vhost: str,
    exists: bool,
    bindings: list[BindingSpec],
    removed_exchanges: set[str],
    removed_queues: set[str],
) -> None:
    current = planning.api.bindings(vhost) if exists else []
    queues = {q["name"]: q for q in planning.api.queues(vhost)} if exists else {}

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

        planning.add(
            Change("create", "binding", spec.describe(), vhost, "in the configuration", BIND, bind)
        )
    for binding in current:
        source = binding.get("source", "")
        if not managed_exchange(source):
            continue
        if planning.keep_delay("binding", source):
            continue
        destination_type = binding.get("destination_type", "queue")
        destination = binding.get("destination", "")
        if gone(source, destination_type, destination):
            continue
        if destination_type == "queue":
            queue = queues.get(destination)
            if queue is None or temporary_queue(queue):
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
            why_in_use(queues[destination], int(queues[destination].get("messages") or 0))
            if destination_type == "queue" and not planning.force
            else None
        )
        if busy:
            kept = f"binding {spec.describe()} (vhost {vhost}): its queue {busy}"
            planning.plan.kept.append(kept)
            continue
        properties_key = binding.get("properties_key", "")

        def unbind(api: ManagementAPI, spec=spec, properties_key=properties_key) -> None:
            api.delete_binding(
                spec.vhost, spec.source, spec.destination_type, spec.destination, properties_key
            )

        planning.add(
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
