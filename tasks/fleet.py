"""The fleet flow's steps: discover the databases and read what deciding needs (no secret value),
and make sure the concurrency limit all fleet runs share exists.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists

from rotation.errors import InvalidRequest, PermanentError
from rotation.fleet import DatabaseFacts
from rotation.kube import Kube, list_databases_in_every_namespace
from rotation.plan import lock_name
from tasks._policy import RETRYING
from tasks.lock import holder_has_ended, holder_of, lease_seconds, renewed_recently

# One limit for every fleet run, so that two of them at once still respect it.
CONCURRENCY_LIMIT: Final = "mssql-auth-rotation"


@task(name="discover-databases", **RETRYING)
def discover_databases(namespaces: list[str], label_selector: str, database: str) -> list[DatabaseFacts]:
    """The MSSQLServers to consider: in ``namespaces`` (empty: every namespace the identity may
    list), with the label selector, or the one ``database`` (``namespace/name``) when given."""
    if database:
        namespace, _, name = database.rpartition("/")
        found = [db for db in Kube(namespace).list_databases() if db["metadata"]["name"] == name]
    elif namespaces:
        found = [db for ns in namespaces for db in Kube(ns).list_databases(label_selector)]
    else:
        try:
            found = list_databases_in_every_namespace(label_selector)
        except PermanentError as exc:
            raise InvalidRequest(
                f"{exc}. Name the namespaces to rotate (namespaces=[...]), or let the identity list "
                "MSSQLServers in every namespace (`python -m rotation rbac-fleet --all-namespaces`)"
            ) from None
    ops: dict[str, tuple[dict[str, Any], ...]] = {}
    facts = []
    for db in sorted(found, key=lambda d: (d["metadata"]["namespace"], d["metadata"]["name"])):
        namespace = db["metadata"]["namespace"]
        kube = Kube(namespace)
        try:
            if namespace not in ops:
                ops[namespace] = tuple(kube.list_ops_requests())
            facts.append(_facts(kube, db, ops[namespace]))
        except PermanentError as exc:  # listed cluster-wide, but not this identity's to rotate
            facts.append(_unreadable(kube, db, exc))
    return facts


def _unreadable(kube: Kube, db: dict[str, Any], error: PermanentError) -> DatabaseFacts:
    name = db["metadata"]["name"]
    return DatabaseFacts(
        namespace=kube.namespace,
        name=name,
        database=db,
        secret=f"{name}-auth",
        secret_found=False,
        unreadable=(
            f"cannot be read: {error}; grant it with python -m rotation rbac --namespace {kube.namespace} "
            f"--database {name} --replicas N (with --fleet when the in-cluster fleet rotates it)"
        ),
    )


def _facts(kube: Kube, db: dict[str, Any], ops: tuple[dict[str, Any], ...]) -> DatabaseFacts:
    name = db["metadata"]["name"]
    secret_name = ((db.get("spec") or {}).get("authSecret") or {}).get("name") or f"{name}-auth"
    secret = kube.read_secret(secret_name)  # only its metadata and key names are kept
    lease = kube.read_lease(lock_name(name))
    holder = holder_of(lease)
    # Only the plan: a lock whose record looks stale, or whose run Prefect reports ended, is planned
    # as interrupted; the rotation it starts takes the lock over only once it has watched the Lease
    # unchanged for a whole lease duration itself (tasks/lock.py), else it is refused.
    live = (
        lease is not None
        and holder is not None
        and renewed_recently(lease, dt.datetime.now(dt.UTC), lease_seconds())
        and not holder_has_ended(holder)
    )
    return DatabaseFacts(
        namespace=kube.namespace,
        name=name,
        database=db,
        secret=secret_name,
        secret_found=secret is not None,
        secret_keys=tuple(sorted((secret.data or {}).keys())) if secret is not None else (),
        secret_annotations=dict(secret.metadata.annotations or {}) if secret is not None else {},
        ops_requests=ops,
        lease_holder=holder,
        lease_live=live,
    )


@task(name="ensure-concurrency-limit", **RETRYING)
def ensure_concurrency_limit(limit: int) -> int:
    """The size of the shared limit: created with ``limit`` slots if missing, else left as it is.

    Never resized: every fleet run shares it (a manual run with ``concurrency=1`` must not throttle
    the schedule's), and an operator may have sized it on purpose. ``limit`` still caps this run's
    own rotations; the log says when the shared limit is smaller or larger.
    """
    with get_client(sync_client=True) as prefect:
        try:
            prefect.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=CONCURRENCY_LIMIT, limit=limit, active=True)
            )
            return limit
        except ObjectAlreadyExists:  # created earlier, or by a fleet run starting at the same moment
            shared = int(prefect.read_global_concurrency_limit_by_name(CONCURRENCY_LIMIT).limit)
    if shared != limit:
        get_run_logger().info(
            "The concurrency limit %r that every fleet run shares has %d slot(s); it stays so (this "
            "run's concurrency=%d only caps its own rotations). To change it: "
            "prefect gcl update %s --limit N",
            CONCURRENCY_LIMIT,
            shared,
            limit,
            CONCURRENCY_LIMIT,
        )
    return shared
