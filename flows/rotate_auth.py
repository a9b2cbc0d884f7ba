"""The ``rotate-mssql-auth`` flow: KubeDB's RotateAuth for an MSSQLServer, as Prefect tasks.

Inspect → Lock → Pause → try: Stage → Set → Verify (the gate) → Commit → UpdatePetSets → restart each
pod (secondaries first) → final check; finally: Resume and unlock. Every step lives in ``tasks/``;
this file only composes them and keeps KubeDB's condition list for the report.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from rotation import constants as c
from rotation.params import (
    Apply,
    ApplyPolicy,
    AuthSecretName,
    DatabaseName,
    Namespace,
    RotationRequest,
    Timeout,
)
from rotation.plan import Stage, Target, restart_order
from rotation.report import ConditionLog, RotationReport
from tasks.check import check_rotation
from tasks.commit import commit_secret, update_petsets
from tasks.inspect import inspect_database
from tasks.lock import acquire_lock, release_lock
from tasks.pause import pause_database, resume_database
from tasks.report import publish_report, record_failure
from tasks.restart import evict_pod, wait_pod_ready
from tasks.rollback import roll_back_password
from tasks.set_password import set_password_on_replicas
from tasks.stage import stage_new_password
from tasks.verify import verify_logins

FIXED_STEPS = 6  # inspect, pause, credentials, petsets, final check, resume: each bounded by timeout


@flow(
    name="rotate-mssql-auth",
    description="Rotate the sa credentials of a KubeDB MSSQLServer (like an MSSQLServerOpsRequest of type "
    "RotateAuth): no pod restarts before the new password logs in on every replica.",
    validate_parameters=True,
)
def rotate_mssql_auth(
    namespace: Namespace,
    database: DatabaseName,
    auth_secret: AuthSecretName = None,
    timeout: Timeout = "5m",
    apply: Apply = ApplyPolicy.IF_READY,
) -> RotationReport:
    request = RotationRequest(
        namespace=namespace, database=database, auth_secret=auth_secret, timeout=timeout, apply=apply
    )
    conditions = ConditionLog()
    holder = _holder_identity()
    secret_in_use: str | None = None
    try:
        with conditions.step("RotateAuth", "Started the rotation of the database's credentials"):
            target = inspect_database(request, _sql_port(), holder)
        acquire_lock(target, holder, _lease_seconds(target))
        try:
            secret_in_use = _rotate(target, request, conditions, holder)
        finally:
            release_lock(target, holder)
    except Exception as exc:
        conditions.add("Failed", str(exc))
        _report(request, conditions, "Failed", secret_in_use, failure=str(exc))
        raise
    conditions.add("Successful", "Successfully rotated the credentials")
    return _report(request, conditions, "Successful", secret_in_use)


def _rotate(target: Target, request: RotationRequest, conditions: ConditionLog, holder: str) -> str:
    with conditions.step("DatabasePauseSucceeded", "Successfully paused database"):
        pause_database(target, holder)
    try:
        with conditions.step(
            "UpdateCredential", "Updated the credentials on every replica and in the secret"
        ):
            secret_in_use = _update_credentials(target, request.auth_secret)
        with conditions.step("UpdatePetSets", "Successfully updated the PetSets"):
            update_petsets(target, secret_in_use)
        for replica in restart_order(target.replicas):
            with conditions.step(f"EvictPod--{replica.pod}", f"Evicted pod {replica.pod}"):
                evict_pod(target, replica)
            with conditions.step(
                f"CheckPodReady--{replica.pod}", f"Pod {replica.pod} is Ready with the new password"
            ):
                wait_pod_ready(target, replica)
        with conditions.step("RestartNodes", "Successfully restarted all nodes"):
            check_rotation(target, secret_in_use)
    finally:
        resume_database(target)
    return secret_in_use


def _update_credentials(target: Target, user_secret: str | None) -> str:
    """Stage → Set → Verify (a failure of Set or Verify puts the old password back), then Commit."""
    if target.stage is Stage.COMMITTED:
        get_run_logger().info("%s: credentials already committed; finishing the restarts", target.ref)
        return target.auth_secret
    source = stage_new_password(target, user_secret)
    try:
        set_password_on_replicas(target)
        verify_logins(target)
    except Exception:
        roll_back_password(target)
        raise
    return commit_secret(target, source)


def _report(
    request: RotationRequest, conditions: ConditionLog, outcome: str, secret: str | None, failure: str = ""
) -> RotationReport:
    report = RotationReport(
        namespace=request.namespace,
        database=request.database,
        outcome=outcome,
        auth_secret=secret,
        conditions=conditions.conditions,
    )
    _best_effort(publish_report, report)
    if failure:
        _best_effort(record_failure, request.namespace, request.database, failure)
    return report


def _best_effort(step: Callable[..., object], *args: object) -> None:
    """Reporting must never hide the rotation's own outcome, so its failures are only logged."""
    try:
        step(*args)
    except Exception as exc:
        get_run_logger().warning("reporting step failed: %s", exc)


def _holder_identity() -> str:
    run_id = flow_run.get_id()
    return f"prefect-flow-run/{run_id}" if run_id else f"local/{uuid.uuid4()}"


def _sql_port() -> int:
    return int(os.environ.get(c.SQL_PORT_ENV, c.DEFAULT_SQL_PORT))


def _lease_seconds(target: Target) -> int:
    """Long enough for a run that uses its whole timeout on every step; a dead run's lock lapses after it."""
    steps = FIXED_STEPS + 2 * len(target.replicas)
    return int(target.timeout_seconds * steps) + 60


if __name__ == "__main__":
    rotate_mssql_auth(namespace="demo", database="mssql-demo")
