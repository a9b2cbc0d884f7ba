"""One object of each watched kind that the sandbox writes to, to know its controllers have caught up.

A write to a barrier yields a resourceVersion; a watch delivers events in resourceVersion order, so
once a watch's handler has seen its barrier's write it has seen every earlier event of its kind
(``Sandbox.settle()``). The barriers live in their own namespace and match nothing the controllers
act on: the pod has no KubeDB labels (the scheduler binds it, and its image runs nowhere), the ops
request names no database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client

from sandbox import kubedb_shapes as shapes

BARRIER_NS, BARRIER = "sandbox-system", "barrier"
BARRIER_KEY = "sandbox.mssql-auth-rotation/barrier"  # the annotation stamped; a label nothing carries


class Barriers:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        custom_kinds = {
            "petsets": (shapes.PETSET_GROUP, shapes.PETSET_VERSION, shapes.PETSET_PLURAL),
            "mssqlservers": (shapes.GROUP, shapes.VERSION, shapes.PLURAL),
            "mssqlserveropsrequests": (shapes.OPS_GROUP, shapes.OPS_VERSION, shapes.OPS_PLURAL),
        }
        self._writers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "pods": lambda patch: self.core.patch_namespaced_pod(BARRIER, BARRIER_NS, patch),
            "secrets": lambda patch: self.core.patch_namespaced_secret(BARRIER, BARRIER_NS, patch),
        }
        for kind, (group, version, plural) in custom_kinds.items():
            self._writers[kind] = self._custom_writer(group, version, plural)

    def _custom_writer(self, group: str, version: str, plural: str) -> Callable[[dict[str, Any]], Any]:
        def write(patch: dict[str, Any]) -> Any:
            return self.custom.patch_namespaced_custom_object(
                group, version, BARRIER_NS, plural, BARRIER, patch
            )

        return write

    def create(self) -> None:
        meta = {"name": BARRIER}
        self.core.create_namespaced_pod(
            BARRIER_NS, {"metadata": meta, "spec": {"containers": [{"name": "pause", "image": "pause"}]}}
        )
        self.core.create_namespaced_secret(BARRIER_NS, {"metadata": meta})
        petset_spec = {
            "replicas": 0,
            "selector": {"matchLabels": {BARRIER_KEY: "none"}},
            "template": {"metadata": {}, "spec": {"containers": []}},
        }
        custom = [
            (shapes.PETSET_GROUP, shapes.PETSET_VERSION, shapes.PETSET_PLURAL, "PetSet", petset_spec),
            (shapes.GROUP, shapes.VERSION, shapes.PLURAL, "MSSQLServer", {}),
            (shapes.OPS_GROUP, shapes.OPS_VERSION, shapes.OPS_PLURAL, "MSSQLServerOpsRequest", {}),
        ]
        for group, version, plural, kind, spec in custom:
            body = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": meta, "spec": spec}
            self.custom.create_namespaced_custom_object(group, version, BARRIER_NS, plural, body)

    def stamp(self, kind: str, count: int) -> int:
        """Write the barrier of ``kind`` (a watcher's resource name); the write's resourceVersion."""
        written = self._writers[kind]({"metadata": {"annotations": {BARRIER_KEY: str(count)}}})
        meta = written["metadata"] if isinstance(written, dict) else written.metadata
        return int(meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version)
