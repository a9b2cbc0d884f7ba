"""Emulated KubeDB provisioner for MSSQLServer: its pause handshake, health checker and PetSet upkeep.

- Pause handshake (``Settings.pause_handshake``): a ``Paused`` condition of status ``Unknown`` (what
  KubeDB's ops-manager writes) is acknowledged by turning it ``True`` (same reason and message, a new
  lastTransitionTime), under a resourceVersion precondition. With the switch off, Unknown is ignored.
- Health checker: ``status.phase`` follows the pods, paused or not (a pause does not stop it). Ready
  needs every replica pod Ready and, in an Availability Group, exactly one ``primary`` label.
- While paused (``True``) the PetSet's secret references are left alone; otherwise they follow
  ``spec.authSecret.name``, and ``spec.authSecret.activeFrom`` follows the auth secret's
  ``kubedb.com/auth-active-from`` (KubeDB's ``EnsureAuthSecret`` → ``patchAuthSecretRef``).
- Deletion (KubeDB's finalizer ``kubedb.com`` and ``terminate``): when a database with
  ``deletionPolicy: WipeOut`` is deleted, its auth secret (unless another database of the namespace
  uses it) gets the database as owner, then the finalizer goes. The real garbage collector then
  removes everything the database owns: PetSets (and through them their pods), Services, the auth
  and certificate Secrets, a PodDisruptionBudget. Nothing here deletes anything itself.
Everything it sees (secret writes, pause and resume) goes to the timeline.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox import podview
from sandbox.podview import Pod
from sandbox.settings import Settings
from sandbox.timeline import Timeline

log = logging.getLogger("sandbox.provisioner")
CONFLICT_RETRIES = 10


def paused_status(db: dict[str, Any]) -> str | None:
    """The status of the database's ``Paused`` condition ("True", "Unknown", ...), None without one."""
    conditions = (db.get("status") or {}).get("conditions") or []
    return next((c.get("status") for c in conditions if c.get("type") == "Paused"), None)


def is_paused(db: dict[str, Any]) -> bool:
    return paused_status(db) == "True"


def phase_from_pods(replicas: list[Pod], expected: int) -> str:
    """KubeDB's phases from the replica pods (not the arbiter's); the AG rule is unverified."""
    live = [p for p in replicas if not podview.is_terminating(p)]
    ready = sum(1 for p in live if podview.is_ready(p))
    if expected > 1 and sum(1 for p in live if podview.role(p) == "primary") != 1:
        return "NotReady"  # no primary (an election is on): nothing accepts writes
    if ready >= expected:
        return "Ready"
    return "Critical" if ready else "NotReady"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Provisioner:
    def __init__(self, api: client.ApiClient, timeline: Timeline, settings: Settings) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.timeline = timeline
        self.settings = settings
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
        if event != "DELETED" and meta.get("deletionTimestamp"):
            self._terminate(db)
        elif event != "DELETED":
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

    def on_pod(self, event: str, pod: Pod) -> None:
        if not podview.is_kubedb_pod(pod):
            return
        key = (pod["metadata"]["namespace"], podview.labels(pod).get(podview.INSTANCE_LABEL, ""))
        if key in self._databases:
            self._reconcile(key)

    def _reconcile(self, key: tuple[str, str]) -> None:
        with self._lock:
            if key not in self._databases:
                return
        try:
            # Decide on the object as it is now: events of other kinds arrive on other threads,
            # and a cached copy could predate a pause.
            db = self._get(key)
            if self.settings.pause_handshake and paused_status(db) == "Unknown":
                self._acknowledge_pause(key, db)
                return  # the acknowledgement is an event of its own, reconciled in turn
            self._reconcile_phase(db)
            if not is_paused(db):  # KubeDB leaves a paused database's workloads alone
                self._reconcile_petset_secret(db)
                self._reconcile_active_from(db)
        except ApiException as exc:
            if exc.status not in (404, 409):  # 409: a newer version is on its way through the watch
                log.warning("reconcile %s/%s: %s", *key, exc.reason)

    def _terminate(self, db: dict[str, Any]) -> None:
        """KubeDB's ``terminate`` for a deleted database, then its finalizer removed (under the
        resourceVersion read: a 409 waits for the next event)."""
        meta = db["metadata"]
        if shapes.FINALIZER not in (meta.get("finalizers") or []):
            return
        try:
            if db["spec"].get("deletionPolicy") == "WipeOut":
                self._own_auth_secret(db)
            finalizers = [f for f in meta["finalizers"] if f != shapes.FINALIZER]
            self.custom.patch_namespaced_custom_object(
                shapes.GROUP,
                shapes.VERSION,
                meta["namespace"],
                shapes.PLURAL,
                meta["name"],
                {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}},
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("terminate %s/%s: %s", meta["namespace"], meta["name"], exc.reason)

    def _own_auth_secret(self, db: dict[str, Any]) -> None:
        """WipeOut: the auth secret becomes the database's (KubeDB's wipeOutDatabase: persistent
        secrets no other database uses get the database as owner), so the collector removes it."""
        meta = db["metadata"]
        name = (db["spec"].get("authSecret") or {}).get("name") or f"{meta['name']}-auth"
        others = self.custom.list_namespaced_custom_object(
            shapes.GROUP, shapes.VERSION, meta["namespace"], shapes.PLURAL
        )["items"]
        if any(
            o["metadata"]["uid"] != meta["uid"]
            and ((o.get("spec") or {}).get("authSecret") or {}).get("name") == name
            for o in others
        ):
            return
        try:
            reply = self.core.read_namespaced_secret(name, meta["namespace"], _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return  # gone already
            raise
        secret = json.loads(reply.data)
        owners: list[dict[str, Any]] = secret["metadata"].get("ownerReferences") or []
        if any(o.get("uid") == meta["uid"] for o in owners):
            return
        owner = shapes.owner_reference(db)
        owner["controller"] = not any(o.get("controller") for o in owners)
        body = {
            "metadata": {
                "resourceVersion": secret["metadata"]["resourceVersion"],
                "ownerReferences": [*owners, owner],
            }
        }
        self.core.patch_namespaced_secret(name, meta["namespace"], body)

    def _get(self, key: tuple[str, str]) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            shapes.GROUP, shapes.VERSION, key[0], shapes.PLURAL, key[1]
        )

    def _acknowledge_pause(self, key: tuple[str, str], db: dict[str, Any]) -> None:
        """Turn Paused Unknown into True: "I have stopped reconciling", as the ops-manager waits for."""
        for _ in range(CONFLICT_RETRIES):
            status = db.get("status") or {}
            if paused_status(db) != "Unknown":
                return
            conditions = [
                {**c, "status": "True", "lastTransitionTime": _now()} if c.get("type") == "Paused" else c
                for c in status.get("conditions") or []
            ]
            patch = {"metadata": {"resourceVersion": db["metadata"]["resourceVersion"]}}
            try:
                body = {**patch, "status": {"conditions": conditions}}
                self.custom.patch_namespaced_custom_object_status(
                    shapes.GROUP, shapes.VERSION, key[0], shapes.PLURAL, key[1], body
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            db = self._get(key)

    def _reconcile_phase(self, db: dict[str, Any]) -> None:
        meta = db["metadata"]
        status = db.get("status") or {}
        if status.get("phase") in (None, "Halted"):
            return  # not provisioned by us yet (create_database sets the first phase)
        pods = podview.list_pods(self.core, meta["namespace"], f"{podview.INSTANCE_LABEL}={meta['name']}")
        phase = phase_from_pods(
            podview.database_replicas(pods, meta["name"]), int(db["spec"].get("replicas", 1))
        )
        if phase != status.get("phase"):
            self.custom.patch_namespaced_custom_object_status(
                shapes.GROUP,
                shapes.VERSION,
                meta["namespace"],
                shapes.PLURAL,
                meta["name"],
                {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {"phase": phase}},
            )

    def _reconcile_active_from(self, db: dict[str, Any]) -> None:
        """Copy the auth secret's activation annotation into ``spec.authSecret.activeFrom``."""
        meta = db["metadata"]
        auth = db["spec"].get("authSecret") or {}
        name = auth.get("name") or f"{meta['name']}-auth"
        secret = self.core.read_namespaced_secret(name, meta["namespace"])
        active_from = (secret.metadata.annotations or {}).get(shapes.AUTH_ACTIVE_FROM)
        if active_from and auth.get("activeFrom") != active_from:
            self.custom.patch_namespaced_custom_object(
                shapes.GROUP,
                shapes.VERSION,
                meta["namespace"],
                shapes.PLURAL,
                meta["name"],
                {"spec": {"authSecret": {"activeFrom": active_from}}},
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
