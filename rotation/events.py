"""Prefect events of our own, about the database rather than the flow run.

Each rotation emits ``kubedb.mssqlserver.rotation.<what>`` on the resource
``kubedb.mssqlserver.<namespace>.<name>`` when it starts, succeeds, fails or rolls back, with the flow
run as a related resource; and ``left-paused`` when the database stays paused after the run (its
``finally`` could not resume it, or the crash hook of tasks/aftermath.py left the pause in place on
purpose), with ``reason`` (why, and what removes it) and, if any, ``error``. Automations (recovery,
the notifications of deployments/automations/notify-failures.yaml) key on the database this way
instead of parsing run names. Payloads carry names, stages and error texts (which never hold a
secret), never a password.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from prefect.events import emit_event
from prefect.logging import get_logger
from prefect.runtime import flow_run

PREFIX: Final = "kubedb.mssqlserver.rotation."


class RotationEvent(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    LEFT_PAUSED = "left-paused"


def resource_id(namespace: str, database: str) -> str:
    return f"kubedb.mssqlserver.{namespace}.{database}"


def resource(namespace: str, database: str) -> dict[str, str]:
    return {
        "prefect.resource.id": resource_id(namespace, database),
        "prefect.resource.name": f"{namespace}/{database}",
        "kubedb.namespace": namespace,
        "kubedb.database": database,
    }


def related_run(run_id: str | None, run_name: str | None) -> list[dict[str, str]]:
    if not run_id:
        return []
    return [
        {
            "prefect.resource.id": f"prefect.flow-run.{run_id}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": run_name or "",
        }
    ]


def emit(
    what: RotationEvent,
    namespace: str,
    database: str,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    **payload: Any,
) -> None:
    """Best effort: an event that cannot be sent never changes the rotation's outcome."""
    try:
        emit_event(
            event=PREFIX + what.value,
            resource=resource(namespace, database),
            related=related_run(run_id, run_name),
            payload={k: v for k, v in payload.items() if v is not None},
        )
    except Exception as exc:
        get_logger("mssql_auth_rotation.events").warning("event %s not sent: %s", what.value, exc)


def emit_from_this_run(what: RotationEvent, namespace: str, database: str, **payload: Any) -> None:
    """``emit``, related to the flow run this code runs in."""
    emit(
        what,
        namespace,
        database,
        run_id=str(flow_run.get_id() or "") or None,
        run_name=flow_run.get_name(),
        **payload,
    )
