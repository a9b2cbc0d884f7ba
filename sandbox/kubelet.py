"""Emulated PetSet controller and kubelet, driven only through the API server.

- The kubelet registers one Node, ``NODE_NAME`` (Ready, this machine's CPUs and memory), and runs
  only the pods the real kube-scheduler binds to it (``spec.nodeName``).
- A PetSet owns the pods ``<petset>-0..N-1`` it created from its template (found by their controller
  reference, not by labels: a database's PetSet and its arbiter's select the same labels). Pods come
  unbound (the scheduler binds them) and without a role label (the coordinator gives roles); in IPv6
  mode each new pod's spec declares its own SQL port.
- A pod that is deleted or evicted (``deletionTimestamp`` set) is stopped after ``pod_stop_delay``,
  then removed; after ``pod_start_delay`` the PetSet controller creates it again.
- When a pod starts it gets an address (a fresh one per start by default); its ``mssql`` container
  resolves ``MSSQL_SA_PASSWORD`` from the Secret as it is at that moment and serves the pod name's
  data volume, with the TLS certificate ``sandbox.tls`` issues for this start (its pod names and
  this start's IP). Readiness (``Settings.readiness_follows_password``): by default a pod is Ready
  only while that password logs in to its own instance (what the mssql-coordinator checks,
  unverified); otherwise whenever its SQL Server runs. A probe re-checks running pods every
  ``PROBE_PERIOD_S``.
- A pod without an ``mssql`` container (the arbiter) runs no SQL Server and is Ready once started.
- Every other pod bound to the node is a generic pod, ``sandbox.process_pods``'s: a pod of the
  project's image (``Settings.project_image``) runs as local processes of this checkout; a pod of any
  other image stays Pending with a Warning Event (reason ImageNotEmulated).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import platform
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox import podview
from sandbox.fleet import PodKey, SqlFleet
from sandbox.process_pods import ProcessPods
from sandbox.settings import Settings
from sandbox.sqlserver import InstanceState
from sandbox.timeline import Timeline
from sandbox.timers import Timers

log = logging.getLogger("sandbox.kubelet")
PROBE_PERIOD_S = 0.2
NODE_NAME = "sandbox-node"
# The node's pods capacity: above a real kubelet's default of 110, since a test session keeps many
# small databases at once (every pod here is a few threads).
NODE_MAX_PODS = 500
RESERVED_MILLICPU, RESERVED_MEMORY = 100, 256 << 20  # kept back from allocatable, as kube-reserved


@dataclass
class PodRuntime:
    uid: str
    containers: tuple[str, ...]
    host: str  # status.podIP: the pod's network exists before (and without) any container
    sa_password: str | None = None  # what the container's environment got at start; None: not started
    ready: bool = False

    @property
    def runs_sql(self) -> bool:
        return "mssql" in self.containers  # the arbiter's pod does not


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bound_here(pod: dict[str, Any]) -> bool:
    """The scheduler has bound the pod to this kubelet's node."""
    return (pod.get("spec") or {}).get("nodeName") == NODE_NAME


def _memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def node_object() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
    }


def node_status() -> dict[str, Any]:
    cpus, memory = os.cpu_count() or 2, _memory_bytes()
    now = _now()
    capacity = {"cpu": str(cpus), "memory": str(memory), "pods": str(NODE_MAX_PODS)}
    allocatable = {
        "cpu": f"{cpus * 1000 - RESERVED_MILLICPU}m",
        "memory": str(memory - RESERVED_MEMORY),
        "pods": str(NODE_MAX_PODS),
    }

    def condition(type_: str, status: str, reason: str) -> dict[str, str]:
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            condition("Ready", "True", "KubeletReady"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": NODE_NAME},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": "mssql-auth-rotation sandbox",
            "containerRuntimeVersion": "sandbox://emulated",
            "kubeletVersion": "v1.20.0-sandbox",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def _hadr_enabled(pod: dict[str, Any]) -> bool:
    mssql = next(c for c in pod["spec"]["containers"] if c["name"] == "mssql")
    return any(e["name"] == "MSSQL_ENABLE_HADR" and e.get("value") == "1" for e in mssql.get("env", []))


class PetSetKubelet:
    def __init__(
        self, api: client.ApiClient, fleet: SqlFleet, timeline: Timeline, settings: Settings
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.fleet = fleet
        self.timeline = timeline
        self.settings = settings
        self._lock = threading.Lock()
        self._runtimes: dict[PodKey, PodRuntime] = {}
        self._terminating: set[str] = set()  # pod uids being stopped
        self._timers = Timers("kubelet")
        self._stopping = threading.Event()
        self._failing_starts: set[PodKey] = set()  # fault switch: these pods' containers never start
        self._prober = threading.Thread(target=self._probe_loop, name="kubelet-probe", daemon=True)
        self.process_pods = ProcessPods(api, settings, NODE_NAME)  # pods that are not KubeDB's

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.register_node()
        self.process_pods.start()
        # Where the API server's pods/log reaches this kubelet's log endpoint (process_pods).
        endpoint = {"kubeletEndpoint": {"Port": self.process_pods.log_port}}
        self.core.patch_node_status(NODE_NAME, {"status": {"daemonEndpoints": endpoint}})
        self._prober.start()

    def register_node(self) -> None:
        """The Node a kubelet registers: Ready, with this machine's CPUs and memory (allocatable
        keeps back what a kubelet reserves for the system) and room for ``NODE_MAX_PODS`` pods."""
        try:
            self.core.create_node(node_object())
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.core.patch_node_status(NODE_NAME, {"status": node_status()})

    def stop(self) -> None:
        self._stopping.set()
        self._timers.cancel_all()
        self._prober.join(timeout=2)
        self.process_pods.stop()

    # -- watch handlers ----------------------------------------------------------------------
    def on_petset(self, event: str, petset: dict[str, Any]) -> None:
        if event in ("ADDED", "MODIFIED"):
            self._ensure_pods(petset)

    def on_pod(self, event: str, pod: dict[str, Any]) -> None:
        if not podview.is_kubedb_pod(pod):
            self.process_pods.on_pod(event, pod)  # it checks the binding itself
            return
        key = PodKey.of(pod)
        if event == "DELETED":
            self._on_deleted(key, pod["metadata"])  # the PetSet controller's part: any pod of a PetSet
        elif not bound_here(pod):
            return  # the kubelet's part: only pods the scheduler bound to this node
        elif podview.is_terminating(pod):
            self._on_terminating(key, pod)
        else:  # ADDED, or MODIFIED by the scheduler's binding (a known uid is left alone)
            self._on_added(key, pod)

    def _on_added(self, key: PodKey, pod: dict[str, Any]) -> None:
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is not None and runtime.uid == pod["metadata"]["uid"]:
                return
            containers = tuple(sorted(podview.container_names(pod)))
            host = self.fleet.plan.host_for_start(key, fresh=self.settings.new_ip_per_restart)
            runtime = PodRuntime(pod["metadata"]["uid"], containers, host)
            self._runtimes[key] = runtime
        if runtime.runs_sql:
            self._start_sql_container(key, pod, runtime.host)
        else:
            self._start_plain_containers(key, pod)

    def _on_terminating(self, key: PodKey, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._terminating:
                return
            self._terminating.add(uid)
        # The labels of this event are the pod's at the moment its deletion began: tests read the
        # restart order (secondaries first, the primary last) from them.
        self.timeline.record(
            "pod-terminating",
            key.namespace,
            key.name,
            pod["metadata"]["resourceVersion"],
            detail=f"role={podview.role(pod)}",
        )
        self._timers.later(self.settings.pod_stop_delay, lambda: self._finish_termination(key, uid))

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
            self._timers.later(
                self.settings.pod_start_delay, lambda: self._recreate(key.namespace, owner["name"])
            )

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
        namespace, name = petset["metadata"]["namespace"], petset["metadata"]["name"]
        selector = ",".join(f"{k}={v}" for k, v in petset["spec"]["selector"]["matchLabels"].items())
        owned = {
            podview.name(p)
            for p in podview.list_pods(self.core, namespace, selector)
            if podview.owner_petset(p) == name
        }
        for ordinal in range(int(petset["spec"]["replicas"])):
            if f"{name}-{ordinal}" in owned:
                continue
            port = self.fleet.plan.port_for_new_pod(
                PodKey(namespace, f"{name}-{ordinal}"), fresh=self.settings.new_ip_per_restart
            )
            pod = shapes.pod_from_template(petset, ordinal, port)  # unbound: the scheduler binds it
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

    def _start_sql_container(self, key: PodKey, pod: dict[str, Any], host: str) -> None:
        with self._lock:
            failing = key in self._failing_starts
        self.fleet.set_address(key, host, shapes.declared_sql_port(pod) or shapes.SQL_PORT)
        sa_password = None if failing else self._resolve_sa_password(key.namespace, pod)
        if sa_password is not None:
            hadr = _hadr_enabled(pod)
            fresh = not self.fleet.has_volume(key)
            if fresh:
                # An empty data directory: SQL Server initialises sa with MSSQL_SA_PASSWORD, once.
                self.fleet.provision(key, sa_password, hadr=hadr)
            if hadr:
                volume = self.fleet.volume(key)
                if not fresh and not self._only_primary(key, volume):
                    volume.catch_up_for(self.settings.secondary_catch_up)  # the log it missed
                volume.role = "RESOLVING"  # until the coordinator gives it a role
            try:
                # The database's TLS (its mounted server certificate, mssql.conf forceencryption):
                # sandbox.tls issues a certificate for this pod and this start's address.
                self.fleet.start(key, podview.labels(pod).get(podview.INSTANCE_LABEL))
            except OSError:
                log.exception("SQL Server of %s could not listen on %s", key, self.fleet.address_of(key))
                sa_password = None
        ready = self._probe(key, sa_password)
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None or runtime.uid != pod["metadata"]["uid"]:
                return
            runtime.sa_password, runtime.ready = sa_password, ready
        self._write_status(key, runtime, started=sa_password is not None)
        self.timeline.record(
            "pod-started",
            key.namespace,
            key.name,
            pod["metadata"]["resourceVersion"],
            detail="ready" if ready else "not ready",
        )

    def _only_primary(self, key: PodKey, volume: InstanceState) -> bool:
        """Whether this replica was the primary and no other running replica has taken over since:
        then it has every committed transaction and nothing to catch up."""
        if volume.role != "PRIMARY":
            return False
        database = key.name.rsplit("-", 1)[0]
        others = [k for k in self.fleet.running_in(key.namespace) if k != key]
        return not any(
            self.fleet.volume(k).role == "PRIMARY" for k in others if k.name.rsplit("-", 1)[0] == database
        )

    def _start_plain_containers(self, key: PodKey, pod: dict[str, Any]) -> None:
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None or runtime.uid != pod["metadata"]["uid"]:
                return
            runtime.ready = True
        self._write_status(key, runtime, started=True)
        self.timeline.record(
            "pod-started", key.namespace, key.name, pod["metadata"]["resourceVersion"], "ready"
        )

    def _probe(self, key: PodKey, sa_password: str | None) -> bool:
        if sa_password is None or not self.fleet.running(key):
            return False
        if not self.settings.readiness_follows_password:
            return True
        return self.fleet.volume(key).check_login("sa", sa_password)

    def _write_status(self, key: PodKey, runtime: PodRuntime, *, started: bool) -> None:
        ready = runtime.ready
        flag = "True" if ready else "False"
        now = _now()
        host = runtime.host
        state: dict[str, Any] = (
            {"running": {"startedAt": now}}
            if started
            else {"waiting": {"reason": "CreateContainerConfigError"}}
        )
        status = {
            "phase": "Running" if started else "Pending",
            "hostIP": "127.0.0.1",
            "podIP": host,
            "podIPs": [{"ip": host}],
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
                for name in runtime.containers
            ],
        }
        try:
            # The uid guards against writing a recreated pod's status with this one's.
            self.core.patch_namespaced_pod_status(
                key.name, key.namespace, {"metadata": {"uid": runtime.uid}, "status": status}
            )
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                raise

    def _probe_loop(self) -> None:
        while not self._stopping.wait(PROBE_PERIOD_S):
            with self._lock:
                snapshot = [(k, r) for k, r in self._runtimes.items() if r.runs_sql and r.sa_password]
            for key, runtime in snapshot:
                ready = self._probe(key, runtime.sa_password)
                if ready != runtime.ready:
                    runtime.ready = ready
                    try:
                        self._write_status(key, runtime, started=True)
                    except Exception:
                        log.exception("readiness update failed for %s", key)
