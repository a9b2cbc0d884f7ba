"""Step 1, Inspect: find the database, its pods and credentials; change nothing.

Every problem found here is an ``InvalidRequest`` that names the object and what to do.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client
from prefect import get_run_logger, task

from rotation import constants as c
from rotation.credentials import Credentials, read_credentials
from rotation.errors import InvalidRequest
from rotation.kube import Kube
from rotation.params import ApplyPolicy, RotationRequest
from rotation.passwords import policy_violation
from rotation.plan import (
    Replica,
    Stage,
    Target,
    active_pause,
    is_our_pause,
    pause_holder,
    role_of,
    stage_of,
)
from rotation.sqlserver import accepts
from tasks._policy import RETRYING
from tasks.lock import refuse_if_locked


def _check_database(request: RotationRequest, db: dict[str, Any], stage: Stage) -> None:
    where = f"MSSQLServer {request.namespace}/{request.database}"
    spec, status = db.get("spec") or {}, db.get("status") or {}
    if spec.get("halted"):
        raise InvalidRequest(f"{where} is halted; resume it before rotating its credentials")
    phase = status.get("phase", "Unknown")
    # IfReady guards starting a rotation. An interrupted one is finished whatever the phase: pods
    # still running with the old password are often why the database is not Ready.
    if request.apply is ApplyPolicy.IF_READY and phase != "Ready" and stage is Stage.IDLE:
        raise InvalidRequest(
            f"{where} is {phase}, not Ready: wait until it is Ready, "
            "or run with apply=Always to rotate anyway"
        )
    pause = active_pause(db)
    if pause is not None and not is_our_pause(pause):
        other = pause.get("message") or pause.get("reason") or "no reason given"
        raise InvalidRequest(f"{where} is paused by another operation ({other}); wait until it is resumed")


def _check_user_secret(kube: Kube, name: str, current: Credentials) -> None:
    supplied = read_credentials(kube, name, purpose="the new auth secret")
    if supplied.username != current.username:
        raise InvalidRequest(
            f"Secret {kube.namespace}/{name}: database username cannot be changed "
            f"(it has {supplied.username!r}, the database uses {current.username!r})"
        )
    problem = policy_violation(supplied.current.reveal())
    if problem is not None:
        raise InvalidRequest(
            f"Secret {kube.namespace}/{name}: SQL Server would refuse its password: {problem}"
        )
    if supplied.current == current.current:
        raise InvalidRequest(
            f"Secret {kube.namespace}/{name} holds the password already in use: nothing to rotate"
        )


def _running(pod: client.V1Pod) -> bool:
    return not pod.metadata.deletion_timestamp and bool(pod.status and pod.status.pod_ip)


def _replicas(kube: Kube, request: RotationRequest, db: dict[str, Any]) -> tuple[Replica, ...]:
    """The database's pods, waiting (within the timeout) for any that is being restarted."""
    where = f"MSSQLServer {request.namespace}/{request.database}"
    expected = int((db.get("spec") or {}).get("replicas", 1))
    found = {p.metadata.name: p for p in kube.list_database_pods(request.database) if _running(p)}
    deadline = time.monotonic() + request.timeout_seconds
    pods = []
    for name in (f"{request.database}-{ordinal}" for ordinal in range(expected)):  # PetSet naming
        if name not in found:
            try:
                found[name] = kube.wait_for_pod(name, _running, deadline)
            except TimeoutError:
                raise InvalidRequest(
                    f"{where} wants {expected} pod(s) but {name} is not running after {request.timeout}: "
                    "wait until the database is healthy"
                ) from None
        pods.append(found[name])
    replicas = []
    for pod in pods:
        role = role_of(pod.metadata.labels or {}, expected)
        replicas.append(
            Replica(pod=pod.metadata.name, host=pod.status.pod_ip, uid=pod.metadata.uid, role=role)
        )
    primaries = [r.pod for r in replicas if r.role == c.ROLE_PRIMARY]
    if len(primaries) != 1:
        raise InvalidRequest(f"{where} has {len(primaries)} primary pods ({primaries}); expected exactly one")
    return tuple(replicas)


def _check_logins(target: Target, creds: Credentials) -> None:
    """The current credentials (or the staged ones, after an interruption) must log in everywhere."""
    usable = [creds.current] + ([creds.next] if creds.next is not None else [])
    for endpoint in target.endpoints():
        if not any(accepts(endpoint, creds.username, password) for password in usable):
            raise InvalidRequest(
                f"replica {endpoint} rejects the credentials in Secret {target.namespace}/{creds.name}: "
                "the secret and the server disagree; fix that before rotating"
            )


def _interrupted_run(db: dict[str, Any], stale_lock_holder: str | None, holder: str) -> str | None:
    """A run of ours that died holding the database: it left our pause, or a lock that has lapsed."""
    pause = active_pause(db)
    paused_by = pause_holder(pause) if pause is not None else None
    candidate = paused_by or stale_lock_holder
    return candidate if candidate != holder else None


@task(name="inspect-database", **RETRYING)
def inspect_database(request: RotationRequest, sql_port: int, holder: str) -> Target:
    kube = Kube(request.namespace)
    db = kube.get_database(request.database)
    stale_lock_holder = refuse_if_locked(kube, request.database, holder)
    secret_name = ((db.get("spec") or {}).get("authSecret") or {}).get("name") or f"{request.database}-auth"
    creds = read_credentials(kube, secret_name, purpose="the database's auth secret")
    interrupted = _interrupted_run(db, stale_lock_holder, holder)
    stage = stage_of(creds.keys, creds.annotations, interrupted_run=interrupted)
    _check_database(request, db, stage)
    if request.auth_secret and stage is Stage.IDLE:
        _check_user_secret(kube, request.auth_secret, creds)
    spec = db.get("spec") or {}
    target = Target(
        namespace=request.namespace,
        database=request.database,
        uid=db["metadata"]["uid"],
        auth_secret=secret_name,
        username=creds.username,
        topology=(spec.get("topology") or {}).get("mode", "Standalone"),
        replicas=_replicas(kube, request, db),
        stage=stage,
        interrupted_run=interrupted,
        sql_port=sql_port,
        timeout_seconds=request.timeout_seconds,
    )
    _check_logins(target, creds)
    if stage is not Stage.IDLE or interrupted is not None:
        get_run_logger().warning(
            "%s: run %s was interrupted (rotation %s); this run finishes its work",
            target.ref,
            interrupted or "unknown",
            stage.value,
        )
    return target
