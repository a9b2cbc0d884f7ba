"""After a successful rotation: restart the workloads that use the database's credentials, so that
applications which read the password only when they start get the new one.

Which workloads and how is rotation/workloads.py: those annotated ``secret.reloader.stakater.com/reload``
with the auth secret in use, and those the run lists (``restart_workloads``), each restarted once as
``kubectl rollout restart`` does. This step only helps: the rotation has succeeded whatever happens
here. A workload this identity may not patch (403) or that does not exist (404) is reported (run log,
report, an Event on the MSSQLServer), never raised; transient API errors are retried a few times,
then reported too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from rotation import rbac
from rotation.kube import Json, Kube, Refusal, now_rfc3339
from rotation.params import RotationRequest
from rotation.plan import Target
from rotation.workloads import (
    RELOAD_ANNOTATION,
    Chosen,
    Outcome,
    Why,
    WorkloadKind,
    WorkloadRef,
    WorkloadRestart,
    WorkloadRestarts,
    annotated_for,
    choose,
    forbidden_list_note,
    not_permitted_message,
    parse_workloads,
    restart_caveat,
    restart_patch,
)
from tasks._policy import RETRYING

# A few quick retries, not the step's whole timeout: the rotation is done, this only follows it up.
A_FEW_RETRIES: Final[dict[str, Any]] = RETRYING | {"retries": 3, "retry_delay_seconds": [0.5, 1.0, 2.0]}
EVENT_REASON: Final = "RestartWorkloads"  # on the MSSQLServer
RESTARTED_REASON: Final = "Restarted"  # on each workload restarted

Answer = Json | Refusal | Exception  # what the API server said to one restart


@task(name="find-annotated-workloads", **A_FEW_RETRIES)
def find_annotated_workloads(
    target: Target, auth_secret: str
) -> tuple[list[WorkloadRef], list[WorkloadKind]]:
    """The workloads whose Reloader annotation names ``auth_secret``, and the kinds this identity may
    not list (403)."""
    kube = Kube(target.namespace)
    found: list[WorkloadRef] = []
    forbidden: list[WorkloadKind] = []
    for kind in WorkloadKind:
        listed = kube.list_workloads(kind)
        if listed is None:
            forbidden.append(kind)
        else:
            found += annotated_for(listed, auth_secret)
    return found, forbidden


@task(name="restart-workload", task_run_name="restart {workload}", **A_FEW_RETRIES)
def restart_workload(target: Target, workload: WorkloadRef, restarted_at: str) -> Json | Refusal:
    """One ``kubectl rollout restart``. Every attempt sends the same time, so a retry after a request
    that did go through changes nothing: the workload restarts once."""
    return Kube(target.namespace).patch_workload(workload, restart_patch(restarted_at))


@task(name="restart-workloads", cache_policy=NO_CACHE, persist_result=False)
def restart_workloads(target: Target, request: RotationRequest, auth_secret: str) -> WorkloadRestarts:
    """Restart every chosen workload once and say what became of each. Raises nothing the Kubernetes
    API answers: refusals, missing workloads and lasting faults are in the result."""
    log = get_run_logger()
    notes: list[str] = []
    try:
        annotated, forbidden = find_annotated_workloads(target, auth_secret)
    except Exception as exc:
        annotated, forbidden = [], []
        notes.append(f"the workloads annotated {RELOAD_ANNOTATION} could not be looked for: {exc}")
    chosen = choose(annotated, parse_workloads(request.restart_workloads, "item"))
    restarted_at = now_rfc3339()
    answers = {c.ref: _restart(target, c.ref, restarted_at) for c in chosen}
    # The grant to apply keeps every workload that exists: it replaces the Role as a whole.
    command = _grant_command(
        target, request, auth_secret, [ref for ref, a in answers.items() if a is not Refusal.NOT_FOUND]
    )
    if forbidden:
        notes.append(forbidden_list_note(forbidden, target.namespace, command))
    result = WorkloadRestarts(
        restarts=[_outcome(c, answers[c.ref], command, target.namespace) for c in chosen], notes=notes
    )
    for item in result.restarts:
        if item.outcome is Outcome.RESTARTED:
            caveat = f": {item.message}" if item.message else ""
            log.info("%s: restarted %s (%s)%s", target.ref, item.title, ", ".join(item.why), caveat)
        else:
            log.warning("%s: did not restart %s (%s): %s", target.ref, item.title, item.outcome, item.message)
    for note in notes:
        log.warning("%s: %s", target.ref, note)
    if result.empty:
        log.info(
            "%s: no workload to restart (none annotated %s: %s, none listed)",
            target.ref,
            RELOAD_ANNOTATION,
            auth_secret,
        )
    _record_events(target, auth_secret, result, answers, restarted_at)
    return result


def _restart(target: Target, workload: WorkloadRef, restarted_at: str) -> Answer:
    try:
        return restart_workload(target, workload, restarted_at)
    except Exception as exc:  # retried already if it was transient: reported, never raised
        return exc


def _outcome(chosen: Chosen, answer: Answer, command: str, namespace: str) -> WorkloadRestart:
    ref, why = chosen.ref, list(chosen.why)
    if answer is Refusal.FORBIDDEN:
        outcome, message = Outcome.NOT_PERMITTED, not_permitted_message(ref, command)
    elif answer is Refusal.NOT_FOUND:
        outcome = Outcome.NOT_FOUND
        message = f"{ref.title} does not exist in namespace {namespace}" + (
            ": check the name in restart_workloads" if Why.PARAMETER in why else " (deleted meanwhile)"
        )
    elif isinstance(answer, Exception):
        outcome, message = Outcome.FAILED, str(answer) or type(answer).__name__
    else:
        outcome, message = Outcome.RESTARTED, restart_caveat(ref.kind, answer)
    return WorkloadRestart(kind=ref.kind, name=ref.name, why=why, outcome=outcome, message=message)


def _grant_command(
    target: Target, request: RotationRequest, auth_secret: str, workloads: Sequence[WorkloadRef]
) -> str:
    """The command that prints a grant letting this database's rotations restart ``workloads``."""
    user_secrets = [] if auth_secret == rbac.auth_secret_name(target.database) else [auth_secret]
    try:
        grant = rbac.grant(
            target.namespace,
            target.database,
            len(target.replicas),
            user_secrets=user_secrets,
            tls_secrets=[request.tls_ca_secret] if request.tls_ca_secret else None,
            restart_workloads=[str(w) for w in workloads],
        )
    except rbac.InvalidName:  # e.g. more replicas than a grant names: let the person fill them in
        parts = [rbac.COMMAND, "--namespace", target.namespace, "--database", target.database]
        parts += ["--replicas", "N", *(f"{rbac.RESTART_OPTION} {w}" for w in workloads)]
        return " ".join(parts)
    return grant.command


def _record_events(
    target: Target, auth_secret: str, result: WorkloadRestarts, answers: dict[WorkloadRef, Answer], at: str
) -> None:
    """An Event on the MSSQLServer (a Warning when anything was not restarted), and one on each
    workload restarted. Best effort: the restarts themselves are done."""
    if result.empty:
        return
    log, kube = get_run_logger(), Kube(target.namespace)
    try:
        database = kube.get_database(target.database)
        kube.record_event(
            database, EVENT_REASON, result.event_message(auth_secret), warning=not result.complete
        )
    except Exception as exc:
        log.warning("%s: could not record the %s Event: %s", target.ref, EVENT_REASON, exc)
    for ref, answer in answers.items():
        if isinstance(answer, dict):
            message = (
                f"Restarted at {at} by mssql-auth-rotation: MSSQLServer {target.ref} has new credentials "
                f"in Secret {auth_secret}"
            )
            try:
                kube.record_event_on_workload(
                    ref, (answer.get("metadata") or {}).get("uid"), RESTARTED_REASON, message
                )
            except Exception as exc:
                log.warning("%s: could not record the Event on %s: %s", target.ref, ref.title, exc)
