"""Emulated KubeDB provisioner for MSSQLServer.

It honours the ``Paused`` status condition: while it is True the database is skipped entirely.
Otherwise it reconciles what KubeDB's provisioner owns here: ``status.phase`` from the pods'
readiness, and the PetSet's secret references from ``spec.authSecret.name``. Everything it sees
(secret writes, pod terminations, pause and resume) goes to the timeline.
"""

from __future__ import annotations

import base64
import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox.timeline import Timeline

log = logging.getLogger("sandbox.provisioner")


def is_paused(db: dict[str, Any]) -> bool:
    conditions = (db.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Paused" and c.get("status") == "True" for c in conditions)


def phase_from_pods(pods: list[client.V1Pod], replicas: int) -> str:
    ready = sum(
        1
        for pod in pods
        if not pod.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    )
    if ready >= replicas:
        return "Ready"
    return "Critical" if ready else "NotReady"


class Provisioner:
    def __init__(self, api: client.ApiClient, timeline: Timeline) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.timeline = timeline
        self._lock = threading.Lock()
        self._databases: dict[tuple[str, str], dict[str, Any]] = {}
        self._secret_versions: dict[tuple[str, str], str] = {}
        self._seen_passwords: set[str] = set()  # every password-like value a secret ever held

    def on_database(self, event: str, db: dict[str, Any]) -> None:
        meta = db["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if event == "DELETED":
                self._databases.pop(key, None)
            else:
                self._databases[key] = db
        self.timeline.observe_database(*key, meta["resourceVersion"], is_paused(db))
        if event != "DELETED":
            self._reconcile(key)

    def on_secret(self, event: str, secret: dict[str, Any]) -> None:
        meta = secret["metadata"]
        key = (meta["namespace"], meta["name"])
        passwords = {
            base64.b64decode(value).decode("utf-8", "replace")
            for name, value in (secret.get("data") or {}).items()
            if name.startswith("password")
        }
        with self._lock:
            self._seen_passwords |= passwords
            known = key in self._secret_versions
            self._secret_versions[key] = meta["resourceVersion"]
        # A relist replays ADDED for secrets that already existed: only real writes count.
        if event == "MODIFIED" or (event == "ADDED" and known):
            keys = ",".join(sorted((secret.get("data") or {}).keys()))
            self.timeline.record("secret-written", *key, meta["resourceVersion"], detail=f"keys={keys}")
        elif event == "DELETED":
            self.timeline.record("secret-deleted", *key, meta["resourceVersion"])

    def seen_passwords(self) -> set[str]:
        with self._lock:
            return set(self._seen_passwords)

    def on_pod(self, event: str, pod: dict[str, Any]) -> None:
        labels = pod["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/name") != "mssqlservers.kubedb.com":
            return
        key = (pod["metadata"]["namespace"], labels.get("app.kubernetes.io/instance", ""))
        if key in self._databases:
            self._reconcile(key)

    def _reconcile(self, key: tuple[str, str]) -> None:
        with self._lock:
            if key not in self._databases:
                return
        try:
            # Decide on the object as it is now: events of other kinds arrive on other threads,
            # and a cached copy could predate a pause.
            db = self.custom.get_namespaced_custom_object(
                shapes.GROUP, shapes.VERSION, *key[:1], shapes.PLURAL, key[1]
            )
            if is_paused(db):
                return  # KubeDB leaves a paused database alone
            self._reconcile_phase(db)
            self._reconcile_petset_secret(db)
        except ApiException as exc:
            if exc.status not in (404, 409):  # 409: a newer version is on its way through the watch
                log.warning("reconcile %s/%s: %s", *key, exc.reason)

    def _reconcile_phase(self, db: dict[str, Any]) -> None:
        meta = db["metadata"]
        status = db.get("status") or {}
        if status.get("phase") in (None, "Halted"):
            return  # not provisioned by us yet (create_database sets the first phase)
        pods = self.core.list_namespaced_pod(
            meta["namespace"], label_selector=f"app.kubernetes.io/instance={meta['name']}"
        ).items
        phase = phase_from_pods(pods, int(db["spec"].get("replicas", 1)))
        if phase != status.get("phase"):
            self.custom.patch_namespaced_custom_object_status(
                shapes.GROUP,
                shapes.VERSION,
                meta["namespace"],
                shapes.PLURAL,
                meta["name"],
                {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {"phase": phase}},
            )

    def _reconcile_petset_secret(self, db: dict[str, Any]) -> None:
        meta = db["metadata"]
        wanted = (db["spec"].get("authSecret") or {}).get("name") or f"{meta['name']}-auth"
        petset = self.custom.get_namespaced_custom_object(
            shapes.PETSET_GROUP, shapes.PETSET_VERSION, meta["namespace"], shapes.PETSET_PLURAL, meta["name"]
        )
        containers = petset["spec"]["template"]["spec"]["containers"]
        changed = False
        for container in containers:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("name") != wanted:
                    ref["name"] = wanted
                    changed = True
        if changed:
            self.custom.replace_namespaced_custom_object(
                shapes.PETSET_GROUP,
                shapes.PETSET_VERSION,
                meta["namespace"],
                shapes.PETSET_PLURAL,
                meta["name"],
                petset,
            )
