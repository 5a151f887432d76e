"""Plan the broker's access: vhosts, users, and users' permissions on each vhost.

Apart from the routing objects (:mod:`~zocalo.rabbitmq_admin.plan.routing`) because
the rules differ: vhosts and users live across the broker, so the tool deletes
only those carrying its owner tag and never the API user (nor that user's
permissions, nor ``/``); users come from ``--user-config`` files, not the topology.
"""

from __future__ import annotations

from functools import partial

from zocalo.rabbitmq_admin.api import ManagementAPI, hash_password, password_matches
from zocalo.rabbitmq_admin.plan.changes import (
    DELETE_PERMISSIONS,
    DELETE_USERS,
    DELETE_VHOSTS,
    PERMISSIONS,
    USERS,
    VHOSTS,
    Change,
)
from zocalo.rabbitmq_admin.plan.context import PlanError, Planning, describe_differences, show
from zocalo.transport.registry import redact_url


def plan_vhosts(planning: Planning) -> set[str]:
    """Plan vhost changes; return the managed vhosts that exist or will."""
    existing = {vhost["name"]: vhost for vhost in planning.api.vhosts()}
    declared = {spec.name: spec for spec in planning.desired.vhosts}
    for spec in planning.desired.vhosts:
        tags = planning.with_owner(spec.tags)
        body = {"description": spec.description, "tags": sorted(tags), "tracing": spec.tracing}

        def put(api: ManagementAPI, spec=spec, tags=tags) -> None:
            api.put_vhost(spec.name, spec.description, tags, spec.tracing)

        current = existing.get(spec.name)
        if current is None:
            planning.add(Change("create", "vhost", spec.name, None, show(body), VHOSTS, put))
            continue
        now = {
            "description": current.get("description", "") or "",
            "tags": sorted(current.get("tags") or []),
            "tracing": bool(current.get("tracing")),
        }
        if now != body:
            reason = "; ".join(describe_differences(now, body))
            planning.add(Change("update", "vhost", spec.name, None, reason, VHOSTS, put))
    if planning.desired.vhosts:
        for name, current in existing.items():
            if name == "/" or name in declared or name in planning.desired.managed_vhosts:
                continue
            if planning.owner_tag not in (current.get("tags") or []):
                continue
            planning.add(
                Change(
                    "delete",
                    "vhost",
                    name,
                    None,
                    f"tagged {planning.owner_tag} but not in the configuration",
                    DELETE_VHOSTS,
                    partial(ManagementAPI.delete_vhost, name=name),
                    needs_force="deleting a vhost deletes everything in it",
                )
            )
    missing = [
        name
        for name in planning.desired.managed_vhosts
        if name not in existing and name not in declared
    ]
    if missing:
        where = redact_url(planning.api.base_url)
        raise PlanError(
            f"vhost(s) {', '.join(missing)} do not exist on {where}: declare "
            "them under 'vhosts:', create them, or choose another target with --vhost"
        )
    return set(planning.desired.managed_vhosts) & set(existing)


def plan_users(planning: Planning) -> None:
    if planning.desired.users is None:
        return
    existing = {user["name"]: user for user in planning.api.users()}
    declared = {user.name for user in planning.desired.users}
    for user in planning.desired.users:
        tags = planning.with_owner(user.tags)
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

        planning.add(Change(action, "user", user.name, None, reason, USERS, put))
    for name, current in existing.items():
        if name in declared or name == planning.api.username:
            continue
        if planning.owner_tag not in (current.get("tags") or []):
            continue
        planning.add(
            Change(
                "delete",
                "user",
                name,
                None,
                f"tagged {planning.owner_tag} but in no --user-config file",
                DELETE_USERS,
                partial(ManagementAPI.delete_user, name=name),
            )
        )


def plan_permissions(planning: Planning, vhost: str, exists: bool) -> None:
    if not planning.desired.permissions:
        return
    current = {p["user"]: p for p in planning.api.permissions(vhost)} if exists else {}
    desired = [p for p in planning.desired.permissions if p.vhost == vhost]
    fields = ("configure", "write", "read")
    for spec in desired:
        body = {key: getattr(spec, key) for key in fields}

        def put(api: ManagementAPI, spec=spec) -> None:
            api.put_permission(spec.vhost, spec.user, spec.configure, spec.write, spec.read)

        now = current.get(spec.user)
        if now is None:
            planning.add(
                Change("create", "permission", spec.user, vhost, show(body), PERMISSIONS, put)
            )
        elif {key: now.get(key) for key in fields} != body:
            reason = "; ".join(describe_differences({key: now.get(key) for key in fields}, body))
            planning.add(Change("update", "permission", spec.user, vhost, reason, PERMISSIONS, put))
    wanted = {spec.user for spec in desired}
    for user in current:
        if user in wanted:
            continue
        if user == planning.api.username:
            planning.plan.warnings.append(
                f"keeping the permissions of {user} (the API user) on vhost {vhost}, "
                "although the configuration does not list them"
            )
            continue
        planning.add(
            Change(
                "delete",
                "permission",
                user,
                vhost,
                "not in the configuration",
                DELETE_PERMISSIONS,
                partial(ManagementAPI.delete_permission, vhost=vhost, user=user),
            )
        )
