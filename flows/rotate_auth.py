"""The ``rotate-mssql-auth`` flow: KubeDB's RotateAuth for an MSSQLServer, as Prefect tasks.

Inspect → Lock → Pause → try: Stage → Set → Verify (the gate) → Commit → UpdatePetSets → restart each
pod (secondaries first; the current primary last, once every secondary is synchronized and a mounted
auth secret has reached its pods) → final check; finally: Resume and unlock. Once the
rotation has succeeded, the workloads that use its secret are restarted (never before, never after a
failure; reported, never fatal). Every step lives in ``tasks/``; this file only composes them and keeps
KubeDB's condition list for the report.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed
from pydantic import ValidationError

from rotation.cancellation import raise_if_stopping
from rotation.constants import ROLE_PRIMARY
from rotation.errors import InvalidRequest, RotationError
from rotation.events import RotationEvent, emit_from_this_run
from rotation.params import (
    Apply,
    ApplyPolicy,
    AuthSecretName,
    DatabaseName,
    FinishOnly,
    MaxAge,
    Namespace,
    OpsRequestName,
    RestartWorkloads,
    RotationRequest,
    Timeout,
    TlsCaSecretName,
    TlsVerify,
    TlsVerifyMode,
)
from rotation.plan import Replica, Stage, Target
from rotation.report import Condition, ConditionLog, RotationReport, StepName
from rotation.rerun import as_rerun
from rotation.workloads import WorkloadRestarts
from tasks.aftermath import after_rotation_stopped
from tasks.check import check_rotation
from tasks.commit import check_before_commit, commit_secret, update_petsets
from tasks.inspect import confirm_due, inspect_database
from tasks.lock import LockKeeper, acquire_lock, lease_seconds, release_lock
from tasks.ops_request import report_to_ops_request
from tasks.pause import pause_database, report_left_paused, resume_database
from tasks.primary_restart import wait_for_secret_propagation, wait_for_synchronized_secondaries
from tasks.report import publish_report, record_failure
from tasks.restart import check_pod_running, evict_pod, get_next_pod
from tasks.rollback import roll_back_password
from tasks.set_password import set_password_on_replicas
from tasks.stage import stage_new_password
from tasks.verify import verify_logins
from tasks.workloads import restart_workloads as restart_workloads_task  # the flow's parameter has its name

RUN_NAME = "rotate-auth {namespace}/{database}"


@flow(
    name="rotate-mssql-auth",
    description="Rotate the sa credentials of a KubeDB MSSQLServer (like an MSSQLServerOpsRequest of type "
    "RotateAuth): no pod restarts before the new password logs in on every replica.",
    validate_parameters=True,
    # The database in the run's name: the UI's lists show it, and events about the run (a crash)
    # carry it, so automations can act on that database (prefect.yaml's recovery trigger).
    flow_run_name=RUN_NAME,
    # Where the flow's own `finally` cannot run (its process was killed, or cancelled past the grace
    # period), the process that supervised it releases what it left, when that is safe.
    on_crashed=[after_rotation_stopped],
    on_cancellation=[after_rotation_stopped],
)
def rotate_mssql_auth(
    namespace: Namespace,
    database: DatabaseName,
    auth_secret: AuthSecretName = None,
    timeout: Timeout = "5m",
    apply: Apply = ApplyPolicy.IF_READY,
    tls_verify: TlsVerifyMode = TlsVerify.VERIFY_FULL,
    tls_ca_secret: TlsCaSecretName = None,
    max_age: MaxAge = None,
    finish_only: FinishOnly = False,
    ops_request: OpsRequestName = None,
    restart_workloads: RestartWorkloads = (),
) -> RotationReport:
    """Rotate the sa credentials of one KubeDB MSSQLServer.

    Prefect shows these descriptions in the deployment's form (it reads them from this docstring).

    Args:
        namespace: Kubernetes namespace of the MSSQLServer (the ops request's namespace).
        database: Name of the MSSQLServer object whose credentials are rotated (spec.databaseRef.name).
        auth_secret: Optional name of a Secret in the same namespace holding the new password
            (spec.authentication.secretRef.name; kubernetes.io/basic-auth or Opaque). Leave empty to
            generate a strong random password. Its username must be the database's current username.
            Never type a password here.
        timeout: How long each step may take, as a duration such as 90s, 5m or 1h30m (spec.timeout);
            at least 10s.
        apply: IfReady refuses unless the database is Ready; Always rotates whatever its phase (spec.apply).
        tls_verify: Every connection is encrypted. VerifyFull checks each replica's certificate against
            the trusted CA and the pod's DNS name; VerifyCA against the CA only; TrustServerCertificate
            checks nothing (not recommended; the report says so).
        tls_ca_secret: Optional Secret (same namespace) whose ca.crt is the CA to trust. Empty: the CA
            of the database's own TLS certificate (Secret <db>-server-cert).
        max_age: Rotate only when the credentials are at least this old (e.g. 30d); the database's own
            spec.authSecret.rotateAfter wins. Empty: rotate now. An interrupted rotation is always finished.
        finish_only: Do nothing unless an earlier rotation of this database was interrupted; then finish it.
        ops_request: The MSSQLServerOpsRequest (same namespace) this run carries out; its status follows
            the run. Set by the bridge (python -m rotation.bridge).
        restart_workloads: Workloads (same namespace) to restart once the rotation has succeeded, as
            kubectl rollout restart does, so that applications that read the password at start get the
            new one: deployment/NAME, statefulset/NAME or daemonset/NAME. Workloads annotated
            secret.reloader.stakater.com/reload with the auth secret's name are restarted too. Each needs
            patch in the rotation's grant (python -m rotation rbac ... --restart-workload KIND/NAME);
            one it may not restart is reported, and the rotation still succeeds.
    """
    request = _validated(
        namespace=namespace,
        database=database,
        auth_secret=auth_secret,
        timeout=timeout,
        apply=apply,
        tls_verify=tls_verify,
        tls_ca_secret=tls_ca_secret,
        max_age=max_age,
        finish_only=finish_only,
        ops_request=ops_request,
        restart_workloads=restart_workloads,
    )
    # Run again under the same id (a drained pod's run rescheduled): finish, never rotate twice.
    request, rerun = as_rerun(request, flow_run.get_run_count())
    conditions = ConditionLog(on_change=_mirror(request))
    if rerun is not None:
        get_run_logger().warning("%s/%s: %s", request.namespace, request.database, rerun)
        conditions.add("RotateAuth", rerun)
    secret_in_use: str | None = None
    target: Target | None = None
    try:
        with conditions.step("RotateAuth", "Started the rotation of the database's credentials"):
            target = inspect_database(request, _holder_identity())
        skip = target.skip
        if skip is None:
            acquired_at = acquire_lock(target, lease_seconds())
            try:
                with LockKeeper(target, lease_seconds(), acquired_at) as keeper:
                    # Under the lock, again: another run may have just done it.
                    skip = confirm_due(request, target) if request.conditional else None
                    if skip is None:
                        _emit(RotationEvent.STARTED, request, stage=target.stage.value)
                        step = _checked(conditions, keeper, target.ref)
                        secret_in_use = _rotate(target, request.auth_secret, step)
            finally:
                release_lock(target)
    except Exception as exc:
        conditions.add("Failed", str(exc))
        _report(request, target, conditions, "Failed", secret_in_use, failure=str(exc))
        _emit(RotationEvent.FAILED, request, error=str(exc), step=_last_step(conditions))
        raise
    if skip is not None:
        conditions.add("Skipped", f"Nothing to do: {skip}")
        report = _report(request, target, conditions, "Skipped", None)
        # A state named Skipped (a kind of Completed): the UI shows the run did nothing, and why.
        # Prefect hands a caller the state's data, the report.
        return cast(RotationReport, Completed(name="Skipped", message=f"Nothing to do: {skip}", data=report))
    conditions.add("Successful", _success_message(target))
    workloads = _restart_workloads(request, target, secret_in_use or target.auth_secret)
    report = _report(request, target, conditions, "Successful", secret_in_use, workloads=workloads)
    _emit(RotationEvent.SUCCEEDED, request, message=_success_message(target))
    return report


def _validated(**parameters: object) -> RotationRequest:
    """The request, or ``InvalidRequest`` saying which parameter is wrong and why."""
    try:
        return RotationRequest.model_validate(parameters)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid parameters: {problems}") from None


def _rotate(target: Target, user_secret: str | None, step: Step) -> str:
    try:
        with step("DatabasePauseSucceeded", "Successfully paused database"):
            pause_database(target)
        if target.stage is Stage.RESUME_ONLY:
            return target.auth_secret  # the interrupted run had finished all but resuming
        with step("UpdateCredential", "Updated the credentials on every replica and in the secret"):
            secret_in_use = _update_credentials(target, user_secret)
        with step("UpdatePetSets", "Successfully updated the PetSets"):
            update_petsets(target, secret_in_use)
        _restart_pods(target, step, secret_in_use)
        with step("RestartNodes", "Successfully restarted all nodes"):
            check_rotation(target, secret_in_use)
    finally:
        try:
            resume_database(target)
        except BaseException as exc:
            report_left_paused(target, exc)  # the database stays paused: a person is told
            raise
    return secret_in_use


def _restart_pods(target: Target, step: Step, secret_in_use: str) -> None:
    """One pod at a time; the roles are read again before each, so the primary always goes last, and
    only once the applications' next login and the failover it causes will succeed."""
    pending, prepared = list(target.restart), False
    while pending:
        with step("GetPod", "Got the next pod to restart") as condition:
            replica = get_next_pod(target, pending)
            condition.type, condition.message = f"GetPod--{replica.pod}", f"Got pod {replica.pod}"
        if not prepared and (replica.role == ROLE_PRIMARY or len(target.replicas) == 1):
            _prepare_primary_restart(target, step, replica, secret_in_use)
            prepared = True
            now = get_next_pod(target, pending)  # the waits took time: read the roles again
            if now.pod != replica.pod:
                continue  # the primary moved meanwhile: the next round records the pod now chosen
            replica = now
        with step(f"EvictPod--{replica.pod}", f"Evicted pod {replica.pod}"):
            evict_pod(target, replica)
        with step(f"CheckPodRunning--{replica.pod}", f"Pod {replica.pod} is running with the new password"):
            check_pod_running(target, replica)
        pending.remove(replica.pod)


def _prepare_primary_restart(target: Target, step: Step, primary: Replica, secret_in_use: str) -> None:
    with step("SecretPropagated", "Pods that mount the auth secret have had time to see the new password"):
        wait_for_secret_propagation(target, secret_in_use)
    if len(target.replicas) > 1:
        with step("SecondariesSynchronized", f"Every secondary is synchronized: {primary.pod} can fail over"):
            wait_for_synchronized_secondaries(target, primary, secret_in_use)


Step = Callable[[str, str], AbstractContextManager[StepName]]


def _checked(conditions: ConditionLog, keeper: LockKeeper, ref: str) -> Step:
    """A KubeDB condition around each step, which first makes sure this run still holds the lock,
    and that its process is not being stopped (then it stops here: rollback or resume follow)."""

    @contextlib.contextmanager
    def step(type_: str, message: str) -> Iterator[StepName]:
        with conditions.step(type_, message) as name:
            raise_if_stopping(ref, type_)
            keeper.fence()
            yield name

    return step


def _last_step(conditions: ConditionLog) -> str | None:
    steps = [cond.type for cond in conditions.conditions if cond.type != "Failed"]
    return steps[-1] if steps else None


def _emit(what: RotationEvent, request: RotationRequest, **payload: object) -> None:
    emit_from_this_run(what, request.namespace, request.database, **payload)


def _success_message(target: Target) -> str:
    if target.stage is Stage.RESUME_ONLY:
        return f"Run {target.interrupted_run} had rotated the credentials but not resumed; resumed now"
    if target.interrupted_run or target.stage is not Stage.IDLE:
        return f"Finished the rotation interrupted in run {target.interrupted_run or '(unknown)'}"
    return "Successfully rotated the credentials"


def _update_credentials(target: Target, user_secret: str | None) -> str:
    """Stage → Set → Verify (a failure of Set or Verify, or another operation holding the database
    before the commit, puts the old password back), then Commit."""
    if target.stage is Stage.COMMITTED:
        get_run_logger().info("%s: credentials already committed; finishing the rotation", target.ref)
        return commit_secret(target, None)  # its second half may be missing
    source = stage_new_password(target, user_secret)
    try:
        raise_if_stopping(target.ref, "setting the new password")
        set_password_on_replicas(target)
        verify_logins(target)
        check_before_commit(target)  # another operation now: roll back rather than commit
        raise_if_stopping(target.ref, "committing the new password")  # stopping: roll back instead
    except BaseException as failure:  # a SIGTERM too (Prefect's TerminationSignal): roll back first
        _roll_back(target, failure)
        raise
    return commit_secret(target, source)


def _roll_back(target: Target, failure: BaseException) -> None:
    """Put the old password back; if even that fails, say how the next run recovers."""
    try:
        roll_back_password(target)
        emit_from_this_run(RotationEvent.ROLLED_BACK, target.namespace, target.database, reason=str(failure))
    except Exception as exc:
        raise RotationError(
            f"{failure} — and the rollback failed too ({exc}). The new password stays staged in Secret "
            f"{target.namespace}/{target.auth_secret} (password.next); run the rotation again to finish it"
        ) from failure


def _restart_workloads(request: RotationRequest, target: Target, secret_in_use: str) -> WorkloadRestarts:
    """The rotation has succeeded: restart the workloads that use its secret. Never fails the run."""
    try:
        return restart_workloads_task(target, request, secret_in_use)
    except Exception as exc:
        get_run_logger().warning("%s: the workloads were not restarted: %s", target.ref, exc)
        return WorkloadRestarts(notes=[f"the workloads were not restarted: {exc}"])


def _mirror(request: RotationRequest) -> Callable[[list[Condition]], None] | None:
    """Writes each step's condition into the ops request this run carries out, if any; the bridge
    writes its final phase once it knows whether another attempt follows."""
    name = request.ops_request
    if name is None:
        return None
    return lambda conditions: _best_effort(report_to_ops_request, request.namespace, name, conditions)


def _report(
    request: RotationRequest,
    target: Target | None,
    conditions: ConditionLog,
    outcome: str,
    secret: str | None,
    failure: str = "",
    workloads: WorkloadRestarts | None = None,
) -> RotationReport:
    report = RotationReport(
        namespace=request.namespace,
        database=request.database,
        outcome=outcome,
        auth_secret=secret,
        tls=target.tls.describe() if target is not None else None,
        conditions=conditions.conditions,
        workloads=workloads.restarts if workloads is not None else [],
        workload_notes=workloads.notes if workloads is not None else [],
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


if __name__ == "__main__":
    rotate_mssql_auth(namespace="demo", database="mssql-demo")
