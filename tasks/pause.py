"""Steps 3 and 5: pause the MSSQLServer (KubeDB's provisioner then leaves it alone) and resume it.

Pausing follows KubeDB's handshake: the run writes ``Paused`` with status ``Unknown`` (under the
resourceVersion it read, so a pause set meanwhile by someone else is never overwritten), and the
provisioner acknowledges with ``True`` once it has stopped reconciling the database. The condition
carries this project's marker and the run's id in its message, so a resume never removes a pause that
belongs to another operation, and a re-run recognises a pause left by a killed run.

Whether KubeDB's MSSQLServer provisioner acknowledges is not public (docs/kubedb-fidelity.md,
"Pausing"); one that does not still honours a ``True`` pause. So the run waits for the acknowledgement
(30 s), then sets ``True`` itself, and the cluster remembers which it was (rotation/provisioner_memory.py):
on a cluster whose provisioner did not acknowledge last time, the next runs wait only a few seconds
(5 s) for one, and an acknowledgement seen at any time restores the full wait for the runs after it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

from prefect import get_run_logger, task

from rotation import constants as c
from rotation import provisioner_memory
from rotation.errors import DatabaseBusy, PauseLost
from rotation.events import RotationEvent, emit_from_this_run
from rotation.kube import Kube, now_rfc3339
from rotation.plan import Target, describe_pause, foreign_pause, our_pause, pause_holder, pause_message
from tasks._policy import RETRYING
from tasks.lock import check_lock

ACK_SECONDS_ENV: Final = "MSSQL_AUTH_ROTATION_PAUSE_ACK_SECONDS"
# How long to wait for the provisioner's acknowledgement before pausing without it. Whether KubeDB's
# MSSQLServer provisioner acknowledges is unverified (other KubeDB databases' do); one that does not
# still honours a True pause, so waiting longer would only slow every rotation down.
DEFAULT_ACK_SECONDS: Final = 30.0
PROBE_SECONDS_ENV: Final = "MSSQL_AUTH_ROTATION_PAUSE_PROBE_SECONDS"
# The wait on a cluster whose provisioner did not acknowledge last time: still long enough for one that
# has since learnt the handshake to answer (KubeDB's docs show its own pause taking about 3 s).
DEFAULT_PROBE_SECONDS: Final = 5.0


def _conditions(db: dict[str, Any]) -> list[dict[str, Any]]:
    return list((db.get("status") or {}).get("conditions") or [])


def _ack_seconds(target: Target, acknowledged_before: bool | None) -> float:
    """The whole period, unless this cluster's provisioner did not acknowledge last time."""
    full = min(target.timeout_seconds, float(os.environ.get(ACK_SECONDS_ENV, DEFAULT_ACK_SECONDS)))
    if acknowledged_before is False:
        return min(full, float(os.environ.get(PROBE_SECONDS_ENV, DEFAULT_PROBE_SECONDS)))
    return full


@task(name="pause-database", **RETRYING)
def pause_database(target: Target) -> None:
    """Request our pause and wait until it is in effect. A pause of anyone else means busy: refuse."""
    kube, holder = Kube(target.namespace), target.holder
    db = kube.get_database(target.database)
    other = foreign_pause(db)
    if other is not None:
        raise DatabaseBusy(
            f"{target.ref} was paused by another operation after it was inspected: {describe_pause(other)}. "
            "Nothing was changed; run the rotation again once it is resumed"
        )
    mine = our_pause(db, holder)
    if mine is None:
        kube.record_event(db, "PauseDatabase", f"Pausing MSSQLServer database: {target.ref}")
        db = _request_pause(kube, target, db, holder)
        mine = our_pause(db, holder)
    if mine is None or mine.get("status") != c.PAUSE_ACKNOWLEDGED:
        db = _await_acknowledgement(kube, target, holder)
    kube.record_event(db, "DatabasePauseSucceeded", f"Successfully paused MSSQLServer database: {target.ref}")
    get_run_logger().info("%s paused", target.ref)


def _request_pause(kube: Kube, target: Target, db: dict[str, Any], holder: str) -> dict[str, Any]:
    """Write our Paused condition as Unknown; a left-over pause of an interrupted run of ours is replaced.

    The resourceVersion precondition turns a concurrent change into a 409, which is retried from a
    fresh read (where a pause set meanwhile is seen and refused).
    """
    requested = {
        "type": c.CONDITION_PAUSED,
        "status": c.PAUSE_REQUESTED,
        "reason": c.PAUSE_REASON,
        "message": pause_message(holder),
        "observedGeneration": db["metadata"].get("generation", 1),
        "lastTransitionTime": now_rfc3339(),
    }
    others = [cond for cond in _conditions(db) if cond.get("type") != c.CONDITION_PAUSED]
    return kube.patch_database_status(
        target.database, {"conditions": [*others, requested]}, db["metadata"]["resourceVersion"]
    )


def _await_acknowledgement(kube: Kube, target: Target, holder: str) -> dict[str, Any]:
    def settled(db: dict[str, Any]) -> bool:
        mine = our_pause(db, holder)
        return mine is None or mine.get("status") == c.PAUSE_ACKNOWLEDGED

    before = provisioner_memory.acknowledges(kube.cluster)
    seconds = _ack_seconds(target, before)
    try:
        deadline = time.monotonic() + seconds
        db = kube.wait_for_database(target.database, settled, deadline, guard=lambda: check_lock(target))
    except TimeoutError:
        if before is not False:
            provisioner_memory.remember(kube.cluster, acknowledged=False, seen_on=target.ref)
        return _pause_without_acknowledgement(kube, target, holder, seconds, before)
    if our_pause(db, holder) is None:
        raise PauseLost(f"{target.ref}: the pause this run requested was removed before it took effect")
    if before is not True:
        provisioner_memory.remember(kube.cluster, acknowledged=True, seen_on=target.ref)
    return db


def _pause_without_acknowledgement(
    kube: Kube, target: Target, holder: str, seconds: float, before: bool | None
) -> dict[str, Any]:
    """No acknowledgement in time: a provisioner without the handshake honours a True pause."""
    db = kube.get_database(target.database)
    conditions = _conditions(db)
    for cond in conditions:
        if pause_holder(cond) == holder:
            cond["status"] = c.PAUSE_ACKNOWLEDGED
            cond["lastTransitionTime"] = now_rfc3339()
            break
    else:
        raise PauseLost(f"{target.ref}: the pause this run requested was removed before it took effect")
    learnt = (
        " (it did not acknowledge last time either)"
        if before is False
        else f"; the next rotations on this cluster wait {_ack_seconds(target, False):.0f}s for it"
    )
    message = (
        f"KubeDB's provisioner did not acknowledge the pause of {target.ref} within {seconds:.0f}s; "
        f"pausing without its acknowledgement{learnt}"
    )
    get_run_logger().warning(message)
    db = kube.patch_database_status(
        target.database, {"conditions": conditions}, db["metadata"]["resourceVersion"]
    )
    kube.record_event(db, "PauseNotAcknowledged", message, warning=True)
    return db


@task(name="resume-database", **RETRYING)
def resume_database(target: Target) -> None:
    """Remove this run's Paused condition, never one that belongs to another run or operation."""
    kube, holder = Kube(target.namespace), target.holder
    db = kube.get_database(target.database)
    conditions = _conditions(db)
    if not any(pause_holder(cond) == holder for cond in conditions):
        return
    kube.record_event(db, "ResumeDatabase", f"Resuming MSSQLServer database: {target.ref}")
    remaining = [cond for cond in conditions if pause_holder(cond) != holder]
    db = kube.patch_database_status(
        target.database, {"conditions": remaining}, db["metadata"]["resourceVersion"]
    )
    kube.record_event(
        db, "DatabaseResumeSucceeded", f"Successfully resumed MSSQLServer database: {target.ref}"
    )
    get_run_logger().info("%s resumed", target.ref)


def report_left_paused(target: Target, failure: BaseException) -> None:
    """The flow's ``finally`` could not resume the database (its retries spent, or the run stopped
    meanwhile): emit ``kubedb.mssqlserver.rotation.left-paused``, whose notification tells a person
    (deployments/automations/notify-failures.yaml). Best effort, like every event."""
    emit_from_this_run(
        RotationEvent.LEFT_PAUSED,
        target.namespace,
        target.database,
        reason=left_paused_reason(target),
        error=str(failure) or type(failure).__name__,
    )


def left_paused_reason(target: Target) -> str:
    return (
        f"this run could not resume {target.ref}: its Paused condition ({pause_message(target.holder)}) is "
        "still on the MSSQLServer, so KubeDB leaves the database alone. The next rotation of the database "
        "takes that pause over and resumes it (rotate-mssql-fleet/recover looks every 10 minutes); if the "
        "pause is still there after that, fix what the error names and run the rotation again, or remove "
        "that Paused condition from the MSSQLServer's status"
    )
