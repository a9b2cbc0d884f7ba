"""Emulated KubeDB ops-request webhook: the part that resumes a database when an ops request ends.

KubeDB's validating webhook (am pkg/webhooks/ops/v1alpha1/mssqlserver.go ValidateUpdate, shared.go
resumeDatabase) removes the ``Paused`` condition of the request's database, by type and whoever set
it, when ANY MSSQLServerOpsRequest of that database has just reached Successful or Failed. Here a
watch on the ops requests plays the webhook: it acts on the transition into a final phase.

Boundaries: it validates nothing; the removal is a status patch under a resourceVersion precondition
(retried on 409), where KubeDB's helper patches without one.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes

log = logging.getLogger("sandbox.ops_webhook")
FINAL_PHASES = ("Successful", "Failed")  # am isOpsReqCompleted
CONFLICT_RETRIES = 10


class OpsWebhook:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self._lock = threading.Lock()
        self._phases: dict[str, str | None] = {}  # ops request uid -> last phase seen

    def on_ops_request(self, event: str, ops: dict[str, Any]) -> None:
        meta = ops["metadata"]
        phase = (ops.get("status") or {}).get("phase")
        with self._lock:
            before = self._phases.pop(meta["uid"], None)
            if event != "DELETED":
                self._phases[meta["uid"]] = phase
        if event != "DELETED" and phase in FINAL_PHASES and before not in FINAL_PHASES:
            database = ((ops.get("spec") or {}).get("databaseRef") or {}).get("name")
            if database:
                self._resume(meta["namespace"], database)

    def _resume(self, namespace: str, database: str) -> None:
        for _ in range(CONFLICT_RETRIES):
            try:
                db = self.custom.get_namespaced_custom_object(
                    shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, database
                )
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            conditions = (db.get("status") or {}).get("conditions") or []
            kept = [c for c in conditions if c.get("type") != "Paused"]
            if len(kept) == len(conditions):
                return
            body = {
                "metadata": {"resourceVersion": db["metadata"]["resourceVersion"]},
                "status": {"conditions": kept},
            }
            try:
                self.custom.patch_namespaced_custom_object_status(
                    shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, database, body
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        log.warning("could not resume %s/%s: kept conflicting", namespace, database)
