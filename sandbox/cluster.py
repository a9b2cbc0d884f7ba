"""The whole sandbox: control plane, KubeDB's CRDs, the emulated controllers and SQL instances.

Used by ``python -m sandbox up``, the pytest fixtures and the demo alike.
"""

from __future__ import annotations

import base64
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox.controlplane import ControlPlane
from sandbox.faultproxy import FaultProxy
from sandbox.fleet import PodKey, SqlFleet
from sandbox.kubelet import PetSetKubelet
from sandbox.provisioner import Provisioner
from sandbox.sqlserver import InstanceState
from sandbox.timeline import Entry, Timeline
from sandbox.watching import ResourceWatcher

CRD_DIR = Path(__file__).with_name("crds")
# Objects the sandbox writes to in order to know its controllers have caught up (see settle()).
BARRIER_NS, BARRIER = "sandbox-system", "barrier"
WAIT_TIMEOUT_S = 30.0
TOKEN_LIFETIME_S = 3600  # minted service-account tokens; the API server's minimum is 600 s


@dataclass
class Settings:
    pod_stop_delay: float = 0.2  # seconds between a pod's deletion and its container stopping
    pod_start_delay: float = 0.3  # seconds between a pod's removal and its recreation
    sql_port: int = 1433


@dataclass(frozen=True)
class Database:
    """A handle on one sandbox database, for tests and the demo."""

    sandbox: Sandbox
    namespace: str
    name: str
    replicas: int

    @property
    def pods(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    def instance(self, pod: str) -> InstanceState:
        return self.sandbox.fleet.volume(PodKey(self.namespace, pod))

    def ip(self, pod: str) -> str:
        return self.sandbox.fleet.ip_of(PodKey(self.namespace, pod))

    def get(self) -> dict[str, Any]:
        return self.sandbox.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            shapes.GROUP, shapes.VERSION, self.namespace, shapes.PLURAL, self.name
        )

    def secret_data(self, secret: str | None = None) -> dict[str, str]:
        name = secret or self.get()["spec"]["authSecret"]["name"]
        data = self.sandbox.core.read_namespaced_secret(name, self.namespace).data or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def timeline(self) -> list[Entry]:
        """The emulated KubeDB's record for this namespace, complete up to this moment."""
        self.sandbox.settle()
        return self.sandbox.timeline.entries(self.namespace)


class Sandbox:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.control_plane = ControlPlane()
        self.fleet = SqlFleet(self.settings.sql_port)
        self.timeline = Timeline()
        self._watchers: list[ResourceWatcher] = []
        self._kubelet: PetSetKubelet | None = None
        self._provisioner: Provisioner | None = None
        self._barrier_count = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Sandbox:
        try:
            self.control_plane.start()
            self.api = config.new_client_from_config(str(self.kubeconfig))
            self.core = client.CoreV1Api(self.api)
            self.custom = client.CustomObjectsApi(self.api)
            self._install_crds()
            self._start_controllers()
            self._create_barriers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
        if self._kubelet is not None:
            self._kubelet.stop()
        for watcher in self._watchers:
            watcher.join(timeout=5)
        self.fleet.stop_all()
        self.control_plane.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def _new_api_client(self) -> client.ApiClient:
        return config.new_client_from_config(str(self.kubeconfig))

    def _install_crds(self) -> None:
        extensions = client.ApiextensionsV1Api(self.api)
        names = []
        for path in sorted(CRD_DIR.glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            extensions.create_custom_resource_definition(body)
            names.append(body["metadata"]["name"])
        for name in names:
            self._wait(
                lambda name=name: any(
                    c.type == "Established" and c.status == "True"
                    for c in (extensions.read_custom_resource_definition_status(name).status.conditions or [])
                ),
                f"CRD {name} established",
            )

    def _start_controllers(self) -> None:
        # Each controller gets its own API client: watches hold connections open.
        kubelet = PetSetKubelet(
            self._new_api_client(),
            self.fleet,
            self.timeline,
            stop_delay=self.settings.pod_stop_delay,
            start_delay=self.settings.pod_start_delay,
        )
        provisioner = Provisioner(self._new_api_client(), self.timeline)
        self._kubelet = kubelet
        self._provisioner = provisioner

        def on_pod(event: str, pod: dict[str, Any]) -> None:
            kubelet.on_pod(event, pod)
            provisioner.on_pod(event, pod)

        pods_api = client.CoreV1Api(self._new_api_client())
        secrets_api = client.CoreV1Api(self._new_api_client())
        petsets_api = client.CustomObjectsApi(self._new_api_client())
        databases_api = client.CustomObjectsApi(self._new_api_client())
        self._watchers = [
            ResourceWatcher("pods", pods_api.list_pod_for_all_namespaces, on_pod),
            ResourceWatcher("secrets", secrets_api.list_secret_for_all_namespaces, provisioner.on_secret),
            ResourceWatcher(
                "petsets",
                petsets_api.list_cluster_custom_object,
                kubelet.on_petset,
                group=shapes.PETSET_GROUP,
                version=shapes.PETSET_VERSION,
                plural=shapes.PETSET_PLURAL,
            ),
            ResourceWatcher(
                "mssqlservers",
                databases_api.list_cluster_custom_object,
                provisioner.on_database,
                group=shapes.GROUP,
                version=shapes.VERSION,
                plural=shapes.PLURAL,
            ),
        ]
        kubelet.start()
        for watcher in self._watchers:
            watcher.start()
        for watcher in self._watchers:
            if not watcher.synced.wait(WAIT_TIMEOUT_S):
                raise TimeoutError(f"{watcher.name} did not sync")

    # -- helpers -----------------------------------------------------------------------------
    def settle(self) -> None:
        """Wait until every controller has handled every change made before this call.

        A write to a barrier object of each watched kind yields a resourceVersion; a watch delivers
        events in resourceVersion order, so once its handler has seen the barrier it has seen all
        earlier events of its kind.
        """
        self._barrier_count += 1
        stamp = {
            "metadata": {"annotations": {"sandbox.mssql-auth-rotation/barrier": str(self._barrier_count)}}
        }
        writes = {
            "pods": lambda: self.core.patch_namespaced_pod(BARRIER, BARRIER_NS, stamp),
            "secrets": lambda: self.core.patch_namespaced_secret(BARRIER, BARRIER_NS, stamp),
            "petsets": lambda: self.custom.patch_namespaced_custom_object(
                shapes.PETSET_GROUP, shapes.PETSET_VERSION, BARRIER_NS, shapes.PETSET_PLURAL, BARRIER, stamp
            ),
            "mssqlservers": lambda: self.custom.patch_namespaced_custom_object(
                shapes.GROUP, shapes.VERSION, BARRIER_NS, shapes.PLURAL, BARRIER, stamp
            ),
        }
        for watcher in self._watchers:
            written = writes[watcher.name.removeprefix("watch-")]()
            meta = written["metadata"] if isinstance(written, dict) else written.metadata
            version = int(meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version)
            if not watcher.wait_handled(version, WAIT_TIMEOUT_S):
                raise TimeoutError(f"{watcher.name} did not catch up with resourceVersion {version}")

    def _create_barriers(self) -> None:
        self.ensure_namespace(BARRIER_NS)
        meta = {"name": BARRIER}
        self.core.create_namespaced_pod(
            BARRIER_NS, {"metadata": meta, "spec": {"containers": [{"name": "pause", "image": "pause"}]}}
        )
        self.core.create_namespaced_secret(BARRIER_NS, {"metadata": meta})
        self.custom.create_namespaced_custom_object(
            shapes.PETSET_GROUP,
            shapes.PETSET_VERSION,
            BARRIER_NS,
            shapes.PETSET_PLURAL,
            {
                "apiVersion": f"{shapes.PETSET_GROUP}/{shapes.PETSET_VERSION}",
                "kind": "PetSet",
                "metadata": meta,
                "spec": {"replicas": 0, "template": {"metadata": {}, "spec": {"containers": []}}},
            },
        )
        self.custom.create_namespaced_custom_object(
            shapes.GROUP,
            shapes.VERSION,
            BARRIER_NS,
            shapes.PLURAL,
            {
                "apiVersion": f"{shapes.GROUP}/{shapes.VERSION}",
                "kind": "MSSQLServer",
                "metadata": meta,
                "spec": {},
            },
        )

    def known_passwords(self) -> set[str]:
        """Every password the sandbox has seen, in a Secret or in a SQL instance (for leak checks)."""
        self.settle()
        seen = self._provisioner.seen_passwords() if self._provisioner is not None else set()
        return {password for password in seen | self.fleet.every_password() if password}

    def fail_pod_starts(self, namespace: str, pod: str, failing: bool = True) -> None:
        """Fault switch: the pod's next containers never start, so a recreated pod stays NotReady."""
        assert self._kubelet is not None
        self._kubelet.fail_starts(PodKey(namespace, pod), failing)

    def coordination_leases(self, namespace: str) -> list[str]:
        """Names of the Leases in a namespace (the rotation's lock is one)."""
        leases = client.CoordinationV1Api(self.api).list_namespaced_lease(namespace).items
        return [lease.metadata.name for lease in leases]

    def wait_for(self, predicate: Any, what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Wait until ``predicate()`` holds; TimeoutError naming ``what`` otherwise."""
        self._wait(predicate, what, timeout)

    @staticmethod
    def _wait(predicate: Any, what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)  # polls the API for a condition that has no watch of its own here

    def ensure_namespace(self, namespace: str) -> None:
        try:
            self.core.create_namespace({"metadata": {"name": namespace}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def service_account_kubeconfig(
        self, namespace: str, service_account: str, path: Path | None = None
    ) -> Path:
        """Write a kubeconfig that authenticates as ``system:serviceaccount:<namespace>:<service_account>``.

        Creates the namespace and the ServiceAccount if missing and mints a token with the TokenRequest
        API (no token Secret is stored). The identity gets no RBAC here: tests grant what they need.
        """
        self.ensure_namespace(namespace)
        try:
            self.core.create_namespaced_service_account(namespace, {"metadata": {"name": service_account}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_LIFETIME_S)
        )
        minted = self.core.create_namespaced_service_account_token(service_account, namespace, request)
        target = path or self.control_plane.workdir / f"kubeconfig-{namespace}-{service_account}"
        return self.control_plane.write_kubeconfig(
            target,
            user=f"system:serviceaccount:{namespace}:{service_account}",
            token=minted.status.token,
            namespace=namespace,
        )

    def fault_proxy(self) -> FaultProxy:
        """A started fault-injecting proxy in front of this sandbox's API server; the caller stops it."""
        pki_dir = Path(tempfile.mkdtemp(prefix="faultproxy-", dir=self.control_plane.workdir))
        return FaultProxy(self.control_plane.server, self.control_plane.ca_cert, pki_dir).start()

    def pods_ready(self, namespace: str, db: str) -> bool:
        """All of the database's pods exist, none is terminating, and each is Ready."""
        replicas = int(
            self.custom.get_namespaced_custom_object(
                shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, db
            )["spec"]["replicas"]
        )
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={db}"
        ).items
        return len(pods) == replicas and all(
            not p.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
            for p in pods
        )

    def create_database(
        self, namespace: str, name: str, replicas: int = 3, password: str | None = None
    ) -> Database:
        """Create what KubeDB creates for an MSSQLServer and wait until it is Ready."""
        self.ensure_namespace(namespace)
        secret = shapes.auth_secret(name, password or shapes.kubedb_password())
        self.core.create_namespaced_secret(namespace, secret)
        db = self.custom.create_namespaced_custom_object(
            shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, shapes.mssqlserver(name, replicas)
        )
        self.custom.patch_namespaced_custom_object_status(
            shapes.GROUP,
            shapes.VERSION,
            namespace,
            shapes.PLURAL,
            name,
            {"status": {"phase": "Provisioning"}},
        )
        for service in shapes.services(name, replicas):
            self.core.create_namespaced_service(namespace, service)
        self.custom.create_namespaced_custom_object(
            shapes.PETSET_GROUP,
            shapes.PETSET_VERSION,
            namespace,
            shapes.PETSET_PLURAL,
            shapes.petset(name, replicas, db["metadata"]["uid"]),
        )
        handle = Database(self, namespace, name, replicas)
        self._wait(
            lambda: handle.get().get("status", {}).get("phase") == "Ready", f"{namespace}/{name} Ready"
        )
        return handle
