"""Step 1, Inspect: find the database, its pods and credentials; change nothing.

Every problem found here is an ``InvalidRequest`` that names the object and what to do.
"""

from __future__ import annotations

from typing import Any

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


def _check_database(request: RotationRequest, db: dict[str, Any]) -> None:
    where = f"MSSQLServer {request.namespace}/{request.database}"
    spec, status = db.get("spec") or {}, db.get("status") or {}
    if spec.get("halted"):
        raise InvalidRequest(f"{where} is halted; resume it before rotating its credentials")
    phase = status.get("phase", "Unknown")
    if request.apply is ApplyPolicy.IF_READY and phase != "Ready":
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


def _replicas(kube: Kube, request: RotationRequest, db: dict[str, Any]) -> tuple[Replica, ...]:
    where = f"MSSQLServer {request.namespace}/{request.database}"
    expected = int((db.get("spec") or {}).get("replicas", 1))
    pods = [p for p in kube.list_database_pods(request.database) if not p.metadata.deletion_timestamp]
    if len(pods) != expected:
        raise InvalidRequest(f"{where} wants {expected} pod(s) but {len(pods)} are running: wait for them")
    replicas = []
    for pod in pods:
        if not pod.status or not pod.status.pod_ip:
            raise InvalidRequest(
                f"pod {request.namespace}/{pod.metadata.name} has no IP yet: wait until it runs"
            )
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


@task(name="inspect-database", **RETRYING)
def inspect_database(request: RotationRequest, sql_port: int, holder: str) -> Target:
    kube = Kube(request.namespace)
    db = kube.get_database(request.database)
    refuse_if_locked(kube, request.database, holder)
    _check_database(request, db)
    secret_name = ((db.get("spec") or {}).get("authSecret") or {}).get("name") or f"{request.database}-auth"
    creds = read_credentials(kube, secret_name, purpose="the database's auth secret")
    pause = active_pause(db)
    interrupted = pause_holder(pause) if pause is not None else None
    stage = stage_of(creds.keys, creds.annotations, paused_by=interrupted if interrupted != holder else None)
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
        interrupted_run=interrupted if interrupted != holder else None,
        sql_port=sql_port,
        timeout_seconds=request.timeout_seconds,
    )
    _check_logins(target, creds)
    if stage is not Stage.IDLE or interrupted not in (None, holder):
        get_run_logger().warning(
            "%s: run %s was interrupted (left the database paused; rotation %s); this run finishes its work",
            target.ref,
            interrupted or "unknown",
            stage.value,
        )
    return target
