"""Emulated PetSet controller and kubelet, driven only through the API server.

- A PetSet gets its pods ``<name>-0..N-1`` from its template (same name, labels and IP every time).
- A pod that is deleted or evicted (``deletionTimestamp`` set) is stopped after ``stop_delay``, then
  removed; after ``start_delay`` the PetSet controller creates it again.
- When a pod starts, its container resolves ``MSSQL_SA_PASSWORD`` from the Secret as it is at that
  moment, and the pod is Ready only while that password logs in to its own SQL instance (what the
  mssql-coordinator checks). A readiness probe re-checks running pods every ``PROBE_PERIOD_S``.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox.fleet import PodKey, SqlFleet
from sandbox.timeline import Timeline

log = logging.getLogger("sandbox.kubelet")
PROBE_PERIOD_S = 0.2
NODE_NAME = "sandbox-node"


@dataclass
class PodRuntime:
    uid: str
    sa_password: str | None  # what the container's environment got at start; None: it could not start
    ready: bool = False


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_kubedb_pod(pod: dict[str, Any]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get("app.kubernetes.io/name") == "mssqlservers.kubedb.com"


class PetSetKubelet:
    def __init__(
        self,
        api: client.ApiClient,
        fleet: SqlFleet,
        timeline: Timeline,
        *,
        stop_delay: float,
        start_delay: float,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.fleet = fleet
        self.timeline = timeline
        self.stop_delay = stop_delay
        self.start_delay = start_delay
        self._lock = threading.Lock()
        self._runtimes: dict[PodKey, PodRuntime] = {}
        self._terminating: set[str] = set()  # pod uids being stopped
        self._timers: set[threading.Timer] = set()
        self._stopping = threading.Event()
        self._failing_starts: set[PodKey] = set()  # fault switch: these pods' containers never start
        self._prober = threading.Thread(target=self._probe_loop, name="kubelet-probe", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._prober.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()
        self._prober.join(timeout=2)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            if not self._stopping.is_set():
                try:
                    action()
                except Exception:
                    log.exception("kubelet action failed")

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    # -- watch handlers ----------------------------------------------------------------------
    def on_petset(self, event: str, petset: dict[str, Any]) -> None:
        if event in ("ADDED", "MODIFIED"):
            self._ensure_pods(petset)

    def on_pod(self, event: str, pod: dict[str, Any]) -> None:
        if not _is_kubedb_pod(pod):
            return
        meta = pod["metadata"]
        key = PodKey(meta["namespace"], meta["name"])
        if event == "DELETED":
            self._on_deleted(key, meta)
        elif meta.get("deletionTimestamp"):
            self._on_terminating(key, pod)
        elif event == "ADDED":
            self._on_added(key, pod)

    def _on_added(self, key: PodKey, pod: dict[str, Any]) -> None:
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is not None and runtime.uid == pod["metadata"]["uid"]:
                return
            self._runtimes[key] = PodRuntime(uid=pod["metadata"]["uid"], sa_password=None)
        self._start_container(key, pod)

    def _on_terminating(self, key: PodKey, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._terminating:
                return
            self._terminating.add(uid)
        self.timeline.record("pod-terminating", key.namespace, key.name, pod["metadata"]["resourceVersion"])
        self._later(self.stop_delay, lambda: self._finish_termination(key, uid))

    def _finish_termination(self, key: PodKey, uid: str) -> None:
        self.fleet.stop(key)
        with self._lock:
            self._runtimes.pop(key, None)
        try:
            self.core.delete_namespaced_pod(
                key.name,
                key.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _on_deleted(self, key: PodKey, meta: dict[str, Any]) -> None:
        with self._lock:
            self._terminating.discard(meta["uid"])
            runtime = self._runtimes.get(key)
            if runtime is not None and runtime.uid == meta["uid"]:
                del self._runtimes[key]
        self.fleet.stop(key)
        self.timeline.record("pod-deleted", key.namespace, key.name, meta["resourceVersion"])
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "PetSet"), None)
        if owner is not None:
            self._later(self.start_delay, lambda: self._recreate(key.namespace, owner["name"]))

    # -- PetSet controller -------------------------------------------------------------------
    def _recreate(self, namespace: str, petset_name: str) -> None:
        try:
            petset = self.custom.get_namespaced_custom_object(
                shapes.PETSET_GROUP, shapes.PETSET_VERSION, namespace, shapes.PETSET_PLURAL, petset_name
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        self._ensure_pods(petset)

    def _ensure_pods(self, petset: dict[str, Any]) -> None:
        namespace = petset["metadata"]["namespace"]
        existing = {
            p.metadata.name
            for p in self.core.list_namespaced_pod(
                namespace, label_selector=f"app.kubernetes.io/instance={petset['metadata']['name']}"
            ).items
        }
        for ordinal in range(int(petset["spec"]["replicas"])):
            pod = shapes.pod_from_template(petset, ordinal, NODE_NAME)
            if pod["metadata"]["name"] in existing:
                continue
            try:
                self.core.create_namespaced_pod(namespace, pod)
            except ApiException as exc:
                if exc.status != 409:  # 409: the old pod is still terminating; its DELETED event retries
                    raise

    # -- kubelet -----------------------------------------------------------------------------
    def _resolve_sa_password(self, namespace: str, pod: dict[str, Any]) -> str | None:
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "mssql")
        env = next((e for e in container.get("env", []) if e["name"] == "MSSQL_SA_PASSWORD"), None)
        if env is None:
            return None
        ref = env["valueFrom"]["secretKeyRef"]
        try:
            secret = self.core.read_namespaced_secret(ref["name"], namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None  # CreateContainerConfigError on a real kubelet
            raise
        value = (secret.data or {}).get(ref["key"])
        return base64.b64decode(value).decode() if value is not None else None

    def fail_starts(self, key: PodKey, failing: bool = True) -> None:
        """Fault switch: the next containers of this pod fail to start (the pod never turns Ready)."""
        with self._lock:
            if failing:
                self._failing_starts.add(key)
            else:
                self._failing_starts.discard(key)

    def _start_container(self, key: PodKey, pod: dict[str, Any]) -> None:
        with self._lock:
            failing = key in self._failing_starts
        sa_password = None if failing else self._resolve_sa_password(key.namespace, pod)
        if sa_password is not None:
            role = (pod["metadata"].get("labels") or {}).get("kubedb.com/role")
            if not self.fleet.has_volume(key):
                # An empty data directory: SQL Server initialises sa with MSSQL_SA_PASSWORD, once.
                self.fleet.provision(key, sa_password, hadr=role is not None)
            self.fleet.volume(key).role = "SECONDARY" if role == "secondary" else "PRIMARY"
            self.fleet.start(key)
        ready = sa_password is not None and self.fleet.volume(key).check_login("sa", sa_password)
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None or runtime.uid != pod["metadata"]["uid"]:
                return
            runtime.sa_password, runtime.ready = sa_password, ready
        self._write_status(key, pod["metadata"]["uid"], started=sa_password is not None, ready=ready)
        self.timeline.record(
            "pod-started",
            key.namespace,
            key.name,
            pod["metadata"]["resourceVersion"],
            detail="ready" if ready else "not ready",
        )

    def _write_status(self, key: PodKey, uid: str, *, started: bool, ready: bool) -> None:
        flag = "True" if ready else "False"
        now = _now()
        ip = self.fleet.ip_of(key)
        state: dict[str, Any] = (
            {"running": {"startedAt": now}}
            if started
            else {"waiting": {"reason": "CreateContainerConfigError"}}
        )
        status = {
            "phase": "Running" if started else "Pending",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": name,
                    "ready": ready,
                    "restartCount": 0,
                    "started": started,
                    "state": state,
                    "image": "",
                    "imageID": "",
                }
                for name in ("mssql", "mssql-coordinator")
            ],
        }
        try:
            self.core.patch_namespaced_pod_status(key.name, key.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _probe_loop(self) -> None:
        while not self._stopping.wait(PROBE_PERIOD_S):
            with self._lock:
                snapshot = list(self._runtimes.items())
            for key, runtime in snapshot:
                if runtime.sa_password is None or not self.fleet.running(key):
                    continue
                ready = self.fleet.volume(key).check_login("sa", runtime.sa_password)
                if ready != runtime.ready:
                    runtime.ready = ready
                    try:
                        self._write_status(key, runtime.uid, started=True, ready=ready)
                    except Exception:
                        log.exception("readiness update failed for %s", key)
