"""Steps 3 and 5: pause the MSSQLServer (KubeDB's provisioner then leaves it alone) and resume it.

The ``Paused`` condition carries this project's marker in its message, so a resume never removes a
pause that belongs to another operation, and a re-run recognises a pause left by a killed run.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.kube import Kube, now_rfc3339
from rotation.plan import Target, active_pause, pause_holder, pause_message
from tasks._policy import RETRYING


def _conditions(db: dict[str, Any]) -> list[dict[str, Any]]:
    return list((db.get("status") or {}).get("conditions") or [])


@task(name="pause-database", **RETRYING)
def pause_database(target: Target, run_id: str) -> None:
    """Add our Paused condition; one left by an interrupted run of ours is taken over."""
    kube = Kube(target.namespace)
    db = kube.get_database(target.database)
    current = active_pause(db)
    if current is not None and pause_holder(current) == run_id:
        return
    ref = f"{target.namespace}/{target.database}"
    kube.record_event(db, "PauseDatabase", f"Pausing MSSQLServer database: {ref}")
    paused = {
        "type": c.CONDITION_PAUSED,
        "status": "True",
        "reason": c.PAUSE_REASON,
        "message": pause_message(run_id),
        "observedGeneration": db["metadata"].get("generation", 1),
        "lastTransitionTime": now_rfc3339(),
    }
    others = [cond for cond in _conditions(db) if cond.get("type") != c.CONDITION_PAUSED]
    db = kube.patch_database_status(
        target.database, {"conditions": [*others, paused]}, db["metadata"]["resourceVersion"]
    )
    kube.record_event(db, "DatabasePauseSucceeded", f"Successfully paused MSSQLServer database: {ref}")
    get_run_logger().info("%s paused", ref)


@task(name="resume-database", **RETRYING)
def resume_database(target: Target, run_id: str) -> None:
    """Remove this run's Paused condition, never one that belongs to another run or operation."""
    kube = Kube(target.namespace)
    db = kube.get_database(target.database)
    conditions = _conditions(db)
    if not any(pause_holder(cond) == run_id for cond in conditions):
        return
    ref = f"{target.namespace}/{target.database}"
    kube.record_event(db, "ResumeDatabase", f"Resuming MSSQLServer database: {ref}")
    remaining = [cond for cond in conditions if pause_holder(cond) != run_id]
    db = kube.patch_database_status(
        target.database, {"conditions": remaining}, db["metadata"]["resourceVersion"]
    )
    kube.record_event(db, "DatabaseResumeSucceeded", f"Successfully resumed MSSQLServer database: {ref}")
    get_run_logger().info("%s resumed", ref)
