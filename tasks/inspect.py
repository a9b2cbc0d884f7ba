"""Step 1, Inspect: find the database, its pods and credentials; change nothing.

Every problem found here is an ``InvalidRequest`` that names the object and what to do.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.credentials import Credentials, pods_to_restart, read_credentials
from rotation.errors import InvalidRequest
from rotation.fleet import age_limit, human, is_due, parse_time
from rotation.kube import Kube, secret_text
from rotation.operator_settings import ALLOW_TRUST_SERVER_CERTIFICATE, trust_server_certificate_refusal
from rotation.ops_request import FINAL_PHASES
from rotation.params import ApplyPolicy, RotationRequest, TlsVerify
from rotation.passwords import policy_violation
from rotation.plan import (
    PodView,
    Replica,
    Stage,
    Target,
    active_ops_requests,
    describe_pause,
    foreign_pause,
    pause_holder,
    pauses,
    primaries,
    replica_of,
    roles_settled,
    secret_users,
    stage_of,
    unsupported_auth_secret,
    usable_replicas,
)
from rotation.sqlserver import accepts
from rotation.tls import CA_KEY, TlsProfile, server_cert_secret
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
    pause = foreign_pause(db)
    if pause is not None:
        raise InvalidRequest(
            f"{where} is paused by another operation: {describe_pause(pause)}; wait until it is resumed"
        )


def _check_auth_secret_spec(request: RotationRequest, db: dict[str, Any]) -> None:
    reason = unsupported_auth_secret((db.get("spec") or {}).get("authSecret") or {})
    if reason is not None:
        raise InvalidRequest(
            f"MSSQLServer {request.namespace}/{request.database} cannot be rotated here: {reason}"
        )


def _check_own_request(kube: Kube, request: RotationRequest) -> None:
    """A run that carries out an ops request does nothing once the request is gone or has ended (it
    may have been deleted between the bridge's start of this run and now)."""
    if request.ops_request is None:
        return
    where = f"MSSQLServerOpsRequest {request.namespace}/{request.ops_request}"
    found = kube.get_ops_request(request.ops_request)
    if found is None or found["metadata"].get("deletionTimestamp"):
        raise InvalidRequest(
            f"{where} {'does not exist' if found is None else 'is being deleted'}: nothing to do"
        )
    phase = (found.get("status") or {}).get("phase")
    if phase in FINAL_PHASES:
        raise InvalidRequest(f"{where} has already ended (phase {phase}): nothing to do")


def _check_ops_requests(kube: Kube, request: RotationRequest) -> None:
    """KubeDB's ops-manager runs one ops request per database at a time; so do we, alongside it."""
    active = active_ops_requests(kube.list_ops_requests(), request.database, own=request.ops_request)
    if active:
        raise InvalidRequest(
            f"MSSQLServer {request.namespace}/{request.database} has KubeDB MSSQLServerOpsRequest(s) "
            f"in progress: {', '.join(active)}; wait until they have finished"
        )


def _check_user_secret(kube: Kube, request: RotationRequest, name: str, current: Credentials) -> None:
    users = [db for db in secret_users(kube.list_databases(), name) if db != request.database]
    if users:
        raise InvalidRequest(
            f"Secret {kube.namespace}/{name} is already the auth secret of MSSQLServer "
            f"{kube.namespace}/{users[0]}: two databases cannot share credentials (rotating one would "
            "overwrite the other's); give this database a Secret of its own"
        )
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


def _usable_replicas(pods: list[PodView], database: str, names: list[str]) -> tuple[Replica, ...] | None:
    """The replicas, once every one of them runs and the roles are settled; None until then."""
    replicas = usable_replicas(pods, database, names)
    return replicas if replicas is not None and roles_settled(replicas) else None


def _replicas(kube: Kube, request: RotationRequest, db: dict[str, Any]) -> tuple[Replica, ...]:
    """The database's replicas, waiting (within the timeout) for a pod being restarted to be back
    and for an availability group to have exactly one primary (the coordinator may be electing one)."""
    names = [f"{request.database}-{n}" for n in range(int((db.get("spec") or {}).get("replicas", 1)))]
    deadline = time.monotonic() + request.timeout_seconds
    try:
        pods = kube.wait_for_database_pods(
            request.database,
            lambda pods: _usable_replicas(pods, request.database, names) is not None,
            deadline,
        )
    except TimeoutError:
        raise InvalidRequest(_not_usable(kube, request, names)) from None
    replicas = _usable_replicas(pods, request.database, names)
    assert replicas is not None  # what the wait waited for
    return replicas


def _not_usable(kube: Kube, request: RotationRequest, names: list[str]) -> str:
    where = f"MSSQLServer {request.namespace}/{request.database}"
    pods = {p.name: p for p in kube.list_database_pods(request.database)}
    missing = [n for n in names if n not in pods or not pods[n].ip or pods[n].terminating]
    if missing:
        return (
            f"{where} wants {len(names)} pod(s) but {', '.join(missing)} is not running after "
            f"{request.timeout}: wait until the database is healthy"
        )
    elected = primaries([replica_of(pods[n], len(names)) for n in names])
    return (
        f"{where} has {len(elected)} primary pods ({elected}) after {request.timeout}; expected exactly "
        "one: wait until its availability group has elected a primary"
    )


def _check_logins(target: Target, creds: Credentials) -> None:
    """The current credentials (or the staged ones, after an interruption) must log in everywhere."""
    usable = [creds.current] + ([creds.next] if creds.next is not None else [])
    for endpoint in target.endpoints():
        if not any(accepts(endpoint, creds.username, password) for password in usable):
            raise InvalidRequest(
                f"replica {endpoint} rejects the credentials in Secret {target.namespace}/{creds.name}: "
                "the secret and the server disagree; fix that before rotating"
            )


def _left_pause(db: dict[str, Any], holder: str) -> str | None:
    """A run of ours that died before resuming: its pause is still on the database."""
    paused_by = next((pause_holder(p) for p in pauses(db) if pause_holder(p) is not None), None)
    return paused_by if paused_by != holder else None


def _check_tls_choice(request: RotationRequest) -> None:
    """A run may ask to verify nothing, but only the operator may allow it (whoever reaches the
    Prefect API picks parameters): checked first, before any Kubernetes or SQL Server call."""
    if request.tls_verify is not TlsVerify.TRUST_SERVER_CERTIFICATE:
        return
    refusal = trust_server_certificate_refusal(os.environ)
    if refusal is not None:
        raise InvalidRequest(f"MSSQLServer {request.namespace}/{request.database}: {refusal}")


def _tls_profile(kube: Kube, request: RotationRequest, db: dict[str, Any]) -> TlsProfile:
    """What to trust for this database's certificates; fail closed when nothing can be verified."""
    where = f"MSSQLServer {request.namespace}/{request.database}"
    if request.tls_verify is TlsVerify.TRUST_SERVER_CERTIFICATE:
        _check_tls_choice(request)  # already checked first; again where the choice takes effect
        return TlsProfile(verify=request.tls_verify)
    name = request.tls_ca_secret or server_cert_secret(db)
    if name is None:
        raise InvalidRequest(
            f"{where} has no spec.tls, so there is no CA to check its replicas' certificates against: "
            "name a Secret whose ca.crt is the CA to trust in tls_ca_secret, or run with "
            "tls_verify=TrustServerCertificate to encrypt without verifying (not recommended, and only "
            f"where the operator allows it: {ALLOW_TRUST_SERVER_CERTIFICATE}=true)"
        )
    source = f"Secret {request.namespace}/{name}"
    secret = kube.read_secret(name)
    if secret is None:
        raise InvalidRequest(f"{source} (the CA to trust) does not exist: create it or fix the name")
    ca = secret_text(secret.data, CA_KEY, where=source)
    if not ca or "-----BEGIN CERTIFICATE-----" not in ca:
        raise InvalidRequest(f"{source} has no PEM certificate under {CA_KEY!r}: it cannot say what to trust")
    return TlsProfile(verify=request.tls_verify, ca_pem=ca, ca_source=f"{source} ({CA_KEY})")


def _still_to_restart(stage: Stage, creds: Credentials, replicas: tuple[Replica, ...]) -> tuple[str, ...]:
    """Every replica; after an interruption past Commit, only those started before it."""
    running_before = pods_to_restart(creds) if stage is Stage.COMMITTED else None
    if running_before is None:
        return tuple(r.pod for r in replicas)
    return tuple(r.pod for r in replicas if r.uid in running_before)


def skip_reason(
    request: RotationRequest, db: dict[str, Any], creds: Credentials, stage: Stage, interrupted: str | None
) -> str | None:
    """Why this run has nothing to do: a run that only finishes interrupted rotations finds none, or
    the credentials are younger than ``max_age``. An interrupted rotation is never skipped."""
    if stage is not Stage.IDLE or interrupted is not None:
        return None
    if request.finish_only:
        return "no interrupted rotation to finish"
    if request.max_age_seconds is None:
        return None
    since = parse_time(creds.annotations.get(c.ANNOTATION_ACTIVE_FROM)) or parse_time(
        ((db.get("spec") or {}).get("authSecret") or {}).get("activeFrom")
    )
    now = dt.datetime.now(dt.UTC)
    if is_due(db, since, request.max_age_seconds, now):
        return None
    assert since is not None  # an unknown age is due
    limit, source = age_limit(db, request.max_age_seconds)
    return (
        f"not due: credentials {human((now - since).total_seconds())} old, due at {human(limit)} ({source})"
    )


@task(name="inspect-database", **RETRYING)
def inspect_database(request: RotationRequest, holder: str) -> Target:
    _check_tls_choice(request)
    kube = Kube(request.namespace)
    _check_own_request(kube, request)
    db = kube.get_database(request.database)
    _check_auth_secret_spec(request, db)
    # Recovery (finish_only) watches even a fresh-looking Lease: its holder may have just died.
    lapsed_lock = refuse_if_locked(kube, request.database, holder, patient=request.finish_only)
    secret_name = ((db.get("spec") or {}).get("authSecret") or {}).get("name") or f"{request.database}-auth"
    creds = read_credentials(kube, secret_name, purpose="the database's auth secret")
    paused_by = _left_pause(db, holder)
    stage = stage_of(creds.keys, creds.annotations, paused_by=paused_by)
    interrupted = paused_by or (lapsed_lock.spec.holder_identity if lapsed_lock is not None else None)
    spec = db.get("spec") or {}
    found = {
        "namespace": request.namespace,
        "database": request.database,
        "uid": db["metadata"]["uid"],
        "auth_secret": secret_name,
        "username": creds.username,
        "topology": (spec.get("topology") or {}).get("mode", "Standalone"),
        "stage": stage,
        "timeout_seconds": request.timeout_seconds,
        "holder": holder,
        "interrupted_run": interrupted,
        "lapsed_lock_version": lapsed_lock.metadata.resource_version if lapsed_lock is not None else None,
        "ops_request": request.ops_request,
    }
    skip = skip_reason(request, db, creds, stage, interrupted)
    if skip is not None:  # nothing to do: no replica is looked at, nobody is logged in to
        return Target(**found, replicas=(), tls=TlsProfile(verify=request.tls_verify), restart=(), skip=skip)
    _check_database(request, db, stage)
    _check_ops_requests(kube, request)
    if request.auth_secret and stage is Stage.IDLE:
        _check_user_secret(kube, request, request.auth_secret, creds)
    tls = _tls_profile(kube, request, db)
    replicas = _replicas(kube, request, db)
    target = Target(**found, replicas=replicas, tls=tls, restart=_still_to_restart(stage, creds, replicas))
    _check_logins(target, creds)
    if stage is not Stage.IDLE or interrupted is not None:
        get_run_logger().warning(
            "%s: run %s was interrupted (rotation %s); this run finishes its work",
            target.ref,
            interrupted or "unknown",
            stage.value,
        )
    return target


@task(name="confirm-due", **RETRYING)
def confirm_due(request: RotationRequest, target: Target) -> str | None:
    """Read again, under the lock, whether there is still something to do: a concurrent run (of
    another fleet run, say) may have finished it between Inspect and the lock."""
    kube = Kube(request.namespace)
    db = kube.get_database(request.database)
    creds = read_credentials(kube, target.auth_secret, purpose="the database's auth secret")
    stage = stage_of(creds.keys, creds.annotations, paused_by=_left_pause(db, target.holder))
    return skip_reason(request, db, creds, stage, target.interrupted_run)
