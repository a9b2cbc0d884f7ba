"""What is left to do after a rotation's process died or was stopped without its ``finally``.

Prefect runs a flow's ``on_crashed`` and ``on_cancellation`` hooks in the process that supervised the
flow run (the worker, or ``prefect flow-run execute`` in a Job's pod) once the flow's own process has
exited or been killed. So these hooks may do what the dead run's ``finally`` did not:

- release the database's Lease, if this run still holds it (its process is gone: nobody renews it,
  and recovery then need not wait for it to lapse);
- remove this run's pause, but only when that is safe: no new password is staged (replicas may
  disagree on the password then, and KubeDB's health checks would act on a half-set database), and
  no other run holds the lock (the pause would be that run's business);
- say what happened, as a Warning Event on the MSSQLServer (and on the ops request the run carried
  out), naming the stage and what finishes it; and, when the database stays paused, as the Prefect
  event ``kubedb.mssqlserver.rotation.left-paused``, whose notification tells a person.

A hook that finds its run still alive in this process (a keeper holds its Lease here, as when the
engine itself runs the hook) does nothing: the run's own ``finally`` is still to come.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.logging import get_logger
from prefect.states import Crashed

from rotation import constants as c
from rotation.events import RotationEvent, emit
from rotation.kube import Kube, now_rfc3339
from rotation.ops_request import FINAL_PHASES, condition
from rotation.plan import lock_name, our_pause, pause_holder
from tasks.lock import FLOW_RUN_HOLDER, held_here, holder_of, lease_kube, lease_seconds, release_if_held_by

REASON = "RotationInterrupted"
LOGGER = "mssql_auth_rotation.aftermath"


def after_rotation_stopped(flow: object, flow_run: FlowRun, state: State[Any]) -> None:
    """``on_crashed`` / ``on_cancellation`` hook of ``rotate-mssql-auth``."""
    parameters = flow_run.parameters or {}
    namespace, database = parameters.get("namespace"), parameters.get("database")
    if not isinstance(namespace, str) or not isinstance(database, str):
        return
    ops_request = parameters.get("ops_request")
    clean_up(
        namespace,
        database,
        f"{FLOW_RUN_HOLDER}{flow_run.id}",
        f"run {flow_run.name} ended {state.name}",
        ops_request if isinstance(ops_request, str) else None,
        run_id=str(flow_run.id),
        run_name=flow_run.name,
    )


def after_fleet_stopped(flow: object, flow_run: FlowRun, state: State[Any]) -> None:
    """``on_crashed`` / ``on_cancellation`` hook of ``rotate-mssql-fleet``: its rotations ran in its
    process, so every one Prefect still shows unfinished died with it (or was stopped). Each is
    cleaned up as a dead rotation is, and marked Crashed: the server would show it Running for ever.
    """
    try:
        children = _unfinished_children(flow_run.id)
    except Exception as exc:
        get_logger(LOGGER).warning("could not list the rotations of fleet run %s: %s", flow_run.name, exc)
        return
    for child in children:
        parameters = child.parameters or {}
        namespace, database = str(parameters.get("namespace")), str(parameters.get("database"))
        if held_here(namespace, lock_name(database), f"{FLOW_RUN_HOLDER}{child.id}"):
            continue  # still running in this process (the engine runs this hook): its finally follows
        after_rotation_stopped(flow, child, state)
        try:
            _mark_crashed(child.id, ended_with_its_fleet(flow_run.name, state.name))
        except Exception as exc:
            get_logger(LOGGER).warning("could not mark run %s crashed: %s", child.name, exc)


def ended_with_its_fleet(fleet_run: str, state: str | None) -> str:
    """The Crashed message of a rotation whose fleet run died or was stopped under it (the failure
    notifications leave these out: deployments/automations/notify-failures.yaml tells the fleet's)."""
    return f"Its fleet run {fleet_run} ended {state} while it ran"


def _unfinished_children(parent: UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as prefect:
        children = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        )
    return [run for run in children if run.state is None or not run.state.is_final()]


def _mark_crashed(run_id: UUID, message: str) -> None:
    with get_client(sync_client=True) as prefect:
        prefect.set_flow_run_state(run_id, Crashed(message=message), force=True)


def clean_up(
    namespace: str,
    database: str,
    holder: str,
    what: str,
    ops_request: str | None = None,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
) -> str:
    """Release what ``holder`` (the run ``run_id``) left on the database when that is safe; returns
    what was done (also written as a Warning Event, and as the left-paused event when the database
    stays paused). Best effort: a failure is logged, never raised (a hook's error would only hide the
    run's own)."""
    log = get_logger(LOGGER)
    if held_here(namespace, lock_name(database), holder):
        return "the run is still alive in this process; its own finally cleans up"
    try:
        kube = Kube(namespace)
        done, left_paused = _clean_up(kube, database, holder, what)
        kube.record_event(kube.get_database(database), REASON, done, warning=True)
        if ops_request:
            _tell_ops_request(kube, ops_request, done)
    except Exception as exc:  # the API server may be the reason the run died
        log.warning("clean-up after %s of %s/%s failed: %s", what, namespace, database, exc)
        return f"clean-up failed: {exc}"
    log.warning("%s/%s: %s", namespace, database, done)
    if left_paused:
        emit(RotationEvent.LEFT_PAUSED, namespace, database, run_id=run_id, run_name=run_name, reason=done)
    return done


def _clean_up(kube: Kube, database: str, holder: str, what: str) -> tuple[str, bool]:
    """What was done, and whether the database stays paused by this run on purpose."""
    ref = f"{kube.namespace}/{database}"
    lease = lease_kube(kube.namespace, lease_seconds()).read_lease(lock_name(database))
    other = holder_of(lease) if holder_of(lease) not in (None, holder) else None
    db = kube.get_database(database)
    secret_name = ((db.get("spec") or {}).get("authSecret") or {}).get("name") or f"{database}-auth"
    secret = kube.read_secret(secret_name)  # only its key names and annotations are looked at
    staged = secret is not None and c.KEY_PASSWORD_NEXT in (secret.data or {})
    pending = secret is not None and c.ANNOTATION_RESTART_PENDING in (secret.metadata.annotations or {})
    said = [f"Rotation {what} without finishing its own clean-up."]
    left_paused = False
    if our_pause(db, holder) is None:
        pass
    elif other is not None:
        said.append(f"Its pause is left to {other}, which now holds the lock.")
    elif staged:
        said.append(
            "The database stays paused: a new password is staged (password.next) and the replicas may "
            "disagree on it until a run finishes or rolls it back."
        )
        left_paused = True
    else:
        remaining = [cond for cond in _conditions(db) if pause_holder(cond) != holder]
        kube.patch_database_status(database, {"conditions": remaining}, db["metadata"]["resourceVersion"])
        said.append("Its pause was removed (nothing was half set).")
    if release_if_held_by(lease_kube(kube.namespace, lease_seconds()), lock_name(database), holder):
        said.append("Its lock was released.")
    if pending:
        said.append(
            f"Its credentials are committed; the recover deployment (or a re-run) restarts the rest of {ref}."
        )
    elif staged:
        said.append(f"The recover deployment (or a re-run) finishes {ref} from the staged password.")
    return " ".join(said), left_paused


def _conditions(db: dict[str, Any]) -> list[dict[str, Any]]:
    return list((db.get("status") or {}).get("conditions") or [])


def _tell_ops_request(kube: Kube, name: str, message: str) -> None:
    """A condition and a Warning Event on the request; its phase stays the bridge's to write."""
    request = kube.get_ops_request(name)
    if request is None or (request.get("status") or {}).get("phase") in FINAL_PHASES:
        return
    generation = int(request["metadata"].get("generation") or 1)
    conditions = [*((request.get("status") or {}).get("conditions") or [])]
    conditions.append(condition(REASON, "False", message, generation, now_rfc3339()))
    kube.patch_ops_request_status(name, {"conditions": conditions})
    kube.record_event_on_ops_request(request, REASON, message, warning=True)
