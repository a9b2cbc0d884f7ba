"""Runs the rotation in its own process and SIGKILLs itself at a chosen point — no ``finally`` runs.

    python -m tests.e2e.crash_driver NAMESPACE DATABASE POINT

POINT is a task name of the flow (the process dies right after that task completes for the first
time: a step boundary), ``mid-set`` (dies after the first replica's ALTER LOGIN committed, before
the next replica's) or ``mid-commit`` (dies after the secret's commit write, before the commit's
second half: the switch of spec.authSecret to a user's secret, and the Event). The flow itself is
unchanged; only this driver wraps what it calls.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import flows.rotate_auth as flow_module
import tasks.commit as commit_module
import tasks.set_password as set_password_module

STEP_TASKS = {
    "inspect-database": "inspect_database",
    "acquire-lock": "acquire_lock",
    "pause-database": "pause_database",
    "stage-new-password": "stage_new_password",
    "set-password-on-replicas": "set_password_on_replicas",
    "verify-logins": "verify_logins",
    "commit-secret": "commit_secret",
    "update-petsets": "update_petsets",
    "get-pod": "get_next_pod",
    "evict-pod": "evict_pod",
    "check-pod-running": "check_pod_running",
    "check-rotation": "check_rotation",
    "resume-database": "resume_database",
}
POINTS = (*STEP_TASKS, "mid-set", "mid-commit")


def die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_after(module: Any, name: str) -> None:
    """Replace ``module.name`` by a call to it followed by SIGKILL."""
    namespace = vars(module)
    real = namespace[name]

    def call_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        die()

    namespace[name] = call_then_die


def arm(point: str) -> None:
    if point == "mid-set":
        die_after(set_password_module, "change_password")
        return
    if point == "mid-commit":
        # The commit's second half; the first call to it in a run follows the secret's write.
        setattr(commit_module, "_point_database_at", die)  # noqa: B010
        return
    name = STEP_TASKS[point]
    task = getattr(flow_module, name)
    setattr(flow_module, name, task.with_options(on_completion=[die]))


def main(namespace: str, database: str, point: str) -> int:
    arm(point)
    flow_module.rotate_mssql_auth(namespace=namespace, database=database)
    return 3  # the kill point was never reached


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
