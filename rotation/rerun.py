"""A flow run executed a second time under the same id finishes only what was interrupted.

Prefect runs a flow run again under its own id when something rescheduled it: with
``PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule`` (prefect-kubernetes sets it for a Job with
``backoffLimit: 0`` unless the template says otherwise), a drained or evicted pod's run goes back to
Scheduled and a new pod runs it again. The first attempt may have finished the rotation, or rolled it
back, before the SIGTERM: doing the request again would rotate twice. So a re-run only finishes an
interrupted rotation (``finish_only``), whatever the environment says.

Pure: the caller passes Prefect's ``run_count`` (``prefect.runtime.flow_run.get_run_count()``).
"""

from __future__ import annotations

from rotation.params import RotationRequest


def as_rerun(request: RotationRequest, run_count: int) -> tuple[RotationRequest, str | None]:
    """The request this attempt carries out, and why it differs from the one asked for (or None).

    ``run_count`` counts the times this flow run entered Running, this attempt included: 1 (or 0,
    outside Prefect) is a first attempt.
    """
    if run_count <= 1 or request.finish_only:
        return request, None
    note = (
        f"this flow run already ran ({run_count - 1} earlier attempt(s) under the same id, stopped "
        "before it ended: a drained or evicted pod, or a rescheduled run); this attempt only finishes "
        "an interrupted rotation of the database and never starts a new one. To rotate again, start a "
        "new run"
    )
    return request.model_copy(update={"finish_only": True}), note
