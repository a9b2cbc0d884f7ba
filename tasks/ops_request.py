"""Mirror a run's progress into the MSSQLServerOpsRequest it carries out, as KubeDB's ops-manager
writes it: ``status.phase`` Progressing, ``observedGeneration``, KubeDB's RotateAuth conditions, and an
Event on the request for each step that ends. The final phase is the bridge's to write (it knows
whether ``spec.maxRetries`` allows another attempt), so this task never writes one.
"""

from __future__ import annotations

import datetime as dt

from prefect import task

from rotation.kube import Kube
from rotation.ops_request import FINAL_PHASES, Phase, condition
from rotation.report import Condition
from tasks._policy import RETRYING


def _at(cond: Condition) -> str:
    ended = cond.started_at + dt.timedelta(seconds=cond.seconds)
    return ended.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@task(name="report-to-ops-request", **RETRYING)
def report_to_ops_request(namespace: str, name: str, conditions: list[Condition]) -> None:
    kube = Kube(namespace)
    request = kube.get_ops_request(name)
    if request is None or (request.get("status") or {}).get("phase") in FINAL_PHASES:
        return  # deleted, or already ended (the bridge wrote it): nothing to tell
    generation = int(request["metadata"].get("generation") or 1)
    kube.patch_ops_request_status(
        name,
        {
            "phase": Phase.PROGRESSING.value,
            "observedGeneration": generation,
            "conditions": [
                condition(cond.type, cond.status, cond.message, generation, _at(cond)) for cond in conditions
            ],
        },
    )
    if conditions:
        last = conditions[-1]
        warning = last.type == "Failed" or last.status != "True"
        kube.record_event_on_ops_request(request, last.type, last.message, warning=warning)
