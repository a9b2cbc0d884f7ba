"""The whole sandbox: control plane (with the real controller-manager and scheduler), KubeDB's CRDs,
the emulated KubeDB controllers and kubelet, and the SQL instances.

Used by ``python -m sandbox up``, the pytest fixtures and the demo alike.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from sandbox import kubedb_shapes as shapes
from sandbox import podview
from sandbox.addresses import AddressPlan
from sandbox.barriers import BARRIER, BARRIER_NS, Barriers
from sandbox.controlplane import READY_TIMEOUT_S, ControlPlane
from sandbox.coordinator import Coordinator
from sandbox.faultproxy import FaultProxy
from sandbox.fleet import PodKey, SqlFleet
from sandbox.kubelet import PetSetKubelet
from sandbox.ops_webhook import OpsWebhook
from sandbox.provisioner import Provisioner
from sandbox.settings import Settings
from sandbox.sqlserver import InstanceState
from sandbox.timeline import Entry, Timeline
from sandbox.tls import NO_TLS, DatabaseTls, certificate_secrets, make_database_ca
from sandbox.watching import Handler, ResourceWatcher

log = logging.getLogger("sandbox")

CRD_DIR = Path(__file__).with_name("crds")
WAIT_TIMEOUT_S = 30.0
TOKEN_LIFETIME_S = 3600  # minted service-account tokens; the API server's minimum is 600 s

__all__ = ["Database", "Sandbox", "Settings"]


@dataclass(frozen=True)
class Database:
    """A handle on one sandbox database, for tests and the demo."""

    sandbox: Sandbox
    namespace: str
    name: str
    replicas: int

    @property
    def pods(self) -> list[str]:
        """The database's replica pods ``<db>-0..N-1`` (never the arbiter)."""
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    @property
    def arbiter(self) -> str | None:
        """The arbiter's pod (an AG with an even replica count has one), else None."""
        return f"{shapes.arbiter_name(self.name)}-0" if shapes.has_arbiter(self.replicas) else None

    def instance(self, pod: str) -> InstanceState:
        return self.sandbox.fleet.volume(PodKey(self.namespace, pod))

    def ip(self, pod: str) -> str:
        """The address the pod's current container listens on (its status.podIP)."""
        return self.sandbox.fleet.address_of(PodKey(self.namespace, pod))[0]

    def port(self, pod: str) -> int:
        """The port the pod's current SQL Server listens on (1433 in IPv4 mode)."""
        return self.sandbox.fleet.address_of(PodKey(self.namespace, pod))[1]

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


def _fan_out(*handlers: Handler) -> Handler:
    """One watch feeding several controllers; one controller's failure does not starve the others."""

    def handle(event: str, obj: dict[str, Any]) -> None:
        for handler in handlers:
            try:
                handler(event, obj)
            except Exception:
                log.exception("%s failed on a %s event", getattr(handler, "__qualname__", handler), event)

    return handle


def _unless_gone(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A delete, unless the object is gone already. Its reply is not parsed: a Service's delete
    answers a Status that the client cannot read as the Service it expects."""
    try:
        call(*args, _preload_content=False, **kwargs).read()
    except ApiException as exc:
        if exc.status != 404:
            raise


class Sandbox:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.control_plane = ControlPlane()
        plan = AddressPlan(self.settings.ip_family, self.settings.sql_port, self.settings.ipv4_octet)
        self.fleet = SqlFleet(plan)
        self.timeline = Timeline()
        self._watchers: list[ResourceWatcher] = []
        self._kubelet: PetSetKubelet | None = None
        self._provisioner: Provisioner | None = None
        self._coordinator: Coordinator | None = None
        self._barriers: Barriers | None = None
        self._barrier_count = 0
        self._database_namespaces: set[str] = set()  # every namespace a database was created in

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Sandbox:
        try:
            self.control_plane.start_api()
            self.api = config.new_client_from_config(str(self.kubeconfig))
            self.core = client.CoreV1Api(self.api)
            self.custom = client.CustomObjectsApi(self.api)
            # policy/v1beta1 (the only PDB API of 1.20) and discovery.k8s.io/v1beta1 have no typed
            # class in the client: its dynamic client, with its discovery cache in the sandbox's folder.
            self.dynamic = DynamicClient(
                self.api, cache_file=str(self.control_plane.workdir / "discovery-cache.json")
            )
            self.pdbs = self.dynamic.resources.get(api_version="policy/v1beta1", kind="PodDisruptionBudget")
            # The CRDs first: the garbage collector and the disruption controller then know PetSets
            # and MSSQLServers from their first discovery.
            self._install_crds()
            self.control_plane.start_controllers()
            self._start_controllers()
            self.ensure_namespace(BARRIER_NS)
            self._barriers = Barriers(self.api)
            self._barriers.create()
            # The scheduler's first effect: the barrier pod bound to the kubelet's node.
            self._wait(
                lambda: self.core.read_namespaced_pod(BARRIER, BARRIER_NS).spec.node_name,
                "kube-scheduler to bind the first pod",
                READY_TIMEOUT_S,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
        for controller in (self._kubelet, self._coordinator):
            if controller is not None:
                controller.stop()
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
        # Each controller and each watch gets its own API client: watches hold connections open.
        settings = self.settings
        kubelet = PetSetKubelet(self._new_api_client(), self.fleet, self.timeline, settings)
        coordinator = Coordinator(self._new_api_client(), self.fleet, self.timeline, settings)
        provisioner = Provisioner(self._new_api_client(), self.timeline, settings)
        webhook = OpsWebhook(self._new_api_client())
        self._kubelet, self._coordinator, self._provisioner = kubelet, coordinator, provisioner

        def custom_watch(
            name: str, handler: Handler, group: str, version: str, plural: str
        ) -> ResourceWatcher:
            api = client.CustomObjectsApi(self._new_api_client())
            return ResourceWatcher(
                name, api.list_cluster_custom_object, handler, group=group, version=version, plural=plural
            )

        on_pod = _fan_out(kubelet.on_pod, coordinator.on_pod, provisioner.on_pod)
        self._watchers = [
            ResourceWatcher(
                "pods", client.CoreV1Api(self._new_api_client()).list_pod_for_all_namespaces, on_pod
            ),
            ResourceWatcher(
                "secrets",
                client.CoreV1Api(self._new_api_client()).list_secret_for_all_namespaces,
                provisioner.on_secret,
            ),
            custom_watch(
                "petsets", kubelet.on_petset, shapes.PETSET_GROUP, shapes.PETSET_VERSION, shapes.PETSET_PLURAL
            ),
            custom_watch(
                "mssqlservers", provisioner.on_database, shapes.GROUP, shapes.VERSION, shapes.PLURAL
            ),
            custom_watch(
                "mssqlserveropsrequests",
                webhook.on_ops_request,
                shapes.OPS_GROUP,
                shapes.OPS_VERSION,
                shapes.OPS_PLURAL,
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
        """Wait until every controller has handled every change made before this call (see
        sandbox/barriers.py). Work a controller schedules for later (a pod's restart after
        ``pod_start_delay``, a role election) is not waited for."""
        assert self._barriers is not None
        self._barrier_count += 1
        for watcher in self._watchers:
            version = self._barriers.stamp(watcher.name.removeprefix("watch-"), self._barrier_count)
            if not watcher.wait_handled(version, WAIT_TIMEOUT_S):
                raise TimeoutError(f"{watcher.name} did not catch up with resourceVersion {version}")

    def known_passwords(self) -> set[str]:
        """Every password the sandbox has seen, in a Secret or in a SQL instance (for leak checks)."""
        self.settle()
        seen = self._provisioner.seen_passwords() if self._provisioner is not None else set()
        return {password for password in seen | self.fleet.every_password() if password}

    def clear_text_wire(self) -> list[str]:
        """Everything that reached any SQL instance of this sandbox outside TLS, as a sniffer on the
        pod network would decode it: LOGIN7 user names and passwords (de-obfuscated), batch SQL and
        RPC payloads (for leak checks; bounded, see sandbox/sqlserver/state.py)."""
        return self.fleet.clear_text_wire()

    def unencrypted_alter_logins(self) -> list[str]:
        """``<namespace>/<pod>`` of every SQL instance that ever got an ALTER LOGIN outside TLS."""
        return [f"{key.namespace}/{key.name}" for key in self.fleet.unencrypted_alter_logins()]

    def serve_certificate(self, namespace: str, pod: str, kind: str) -> None:
        """Fault switch: the certificate the pod's SQL Server serves, at once for new connections and
        at every later start until switched back: "kubedb" (the normal one: the database's CA, the
        pod's DNS names and current IP), "foreign-ca" (the right names, another CA) or "wrong-name"
        (the database's CA, another host's name and not the pod's IP)."""
        try:
            labels = self.core.read_namespaced_pod(pod, namespace).metadata.labels or {}
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise ValueError(f"no pod {namespace}/{pod}") from exc
        self.fleet.serve_certificate(PodKey(namespace, pod), labels.get(podview.INSTANCE_LABEL), kind)

    def fail_pod_starts(self, namespace: str, pod: str, failing: bool = True) -> None:
        """Fault switch: the pod's next containers never start, so a recreated pod stays NotReady."""
        assert self._kubelet is not None
        self._kubelet.fail_starts(PodKey(namespace, pod), failing)

    def pod_log(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """What ``kubectl logs [-c container] [--previous]`` shows for a pod of the project's image
        (sandbox/process_pods.py), kept after the pod is deleted until a pod of that name starts."""
        assert self._kubelet is not None
        return self._kubelet.process_pods.read_log(namespace, pod, container, previous)

    def coordination_leases(self, namespace: str) -> list[str]:
        """Names of the Leases in a namespace that somebody holds (the rotation's lock is one; a
        released lock stays as a Lease with no holder, and is not listed)."""
        leases = client.CoordinationV1Api(self.api).list_namespaced_lease(namespace).items
        return [
            lease.metadata.name for lease in leases if lease.spec is not None and lease.spec.holder_identity
        ]

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

    def database_namespaces(self) -> set[str]:
        """Every namespace a database was created in."""
        return set(self._database_namespaces)

    def remove_databases(self, namespace: str) -> None:
        """Delete every database of ``namespace`` and wait until what it owned is gone and its SQL
        Servers have stopped. Deleting the MSSQLServer is all it takes, as with KubeDB: the
        provisioner's WipeOut hands the auth secret to the database, and the real garbage collector
        removes its PetSets (then their pods), Services, Secrets and budget. Without this, a test's
        databases keep their servers, threads and sockets until the sandbox stops."""
        databases = self.custom.list_namespaced_custom_object(
            shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL
        )["items"]
        for db in databases:
            _unless_gone(
                self.custom.delete_namespaced_custom_object,
                shapes.GROUP,
                shapes.VERSION,
                namespace,
                shapes.PLURAL,
                db["metadata"]["name"],
            )
        uids = {db["metadata"]["uid"] for db in databases}

        def collected() -> bool:
            if self.fleet.running_in(namespace):
                return False
            left = self.custom.list_namespaced_custom_object(
                shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL
            )["items"]
            if any(db["metadata"]["uid"] in uids for db in left):
                return False
            petsets = self.custom.list_namespaced_custom_object(
                shapes.PETSET_GROUP, shapes.PETSET_VERSION, namespace, shapes.PETSET_PLURAL
            )["items"]
            return not petsets and not any(
                podview.owner_petset(p) is not None for p in podview.list_pods(self.core, namespace)
            )

        self._wait(collected, f"the databases of {namespace} and what they owned to be collected")
        self.fleet.retire(namespace)

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
        """All of the database's replica pods exist, none is terminating, and each is Ready."""
        replicas = int(
            self.custom.get_namespaced_custom_object(
                shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, db
            )["spec"]["replicas"]
        )
        listed = podview.list_pods(self.core, namespace, f"{podview.INSTANCE_LABEL}={db}")
        pods = podview.database_replicas(listed, db)
        return len(pods) == replicas and all(
            not podview.is_terminating(p) and podview.is_ready(p) for p in pods
        )

    def create_database(
        self,
        namespace: str,
        name: str,
        replicas: int = 3,
        password: str | None = None,
        *,
        auth_secret_type: str = shapes.BASIC_AUTH,
        pdb: dict[str, Any] | None = None,
        client_tls: bool = False,
        tls: bool = True,
    ) -> Database:
        """Create what KubeDB creates for an MSSQLServer and wait until it is Ready (roles given).

        ``auth_secret_type`` "kubernetes.io/basic-auth": KubeDB generates ``<db>-auth``, owned by the
        database; "Opaque": the user brought ``<db>-auth`` before the database (no owner). ``pdb``:
        the spec of a PodDisruptionBudget ``<db>`` over the database's pods, e.g. ``{"maxUnavailable": 1}``.
        ``tls``: ``spec.tls`` with a CA of its own (Issuer ``<db>-ca``) and the secrets
        ``<db>-server-cert`` and ``<db>-client-cert``; every pod's SQL Server serves a certificate of
        that CA for its names and current IP (sandbox/tls.py). False: no ``spec.tls``, no secrets, and
        self-signed certificates. ``client_tls``: ``spec.tls.clientTLS``, the SQL Servers force
        encryption.
        """
        if auth_secret_type not in (shapes.BASIC_AUTH, shapes.OPAQUE):
            raise ValueError(f"auth_secret_type must be {shapes.BASIC_AUTH!r} or {shapes.OPAQUE!r}")
        if client_tls and not tls:
            raise ValueError("client_tls needs tls (spec.tls.clientTLS is part of spec.tls)")
        self.ensure_namespace(namespace)
        password = password or shapes.kubedb_password()
        active_from = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if auth_secret_type == shapes.OPAQUE:
            # Created as KubeDB leaves it once adopted (labels, activation), so the timeline starts clean.
            secret = shapes.user_auth_secret(name, password, auth_secret_type, active_from)
            self.core.create_namespaced_secret(namespace, secret)
        tls_spec = shapes.tls_spec(name, client_tls) if tls else None
        body = shapes.mssqlserver(name, replicas, tls_spec)
        db = self._create_custom(namespace, shapes.GROUP, shapes.VERSION, shapes.PLURAL, body)
        # cert-manager issues the certificates before any pod mounts them; the pods' SQL Servers then
        # get certificates of the same CA at each start.
        database_tls = NO_TLS
        if tls:
            ca = make_database_ca(namespace, name)
            for secret in certificate_secrets(namespace, name, replicas, ca):
                # cert-manager with --enable-certificate-owner-ref, its Certificate being the
                # database's: collapsed into one owner reference, so the secrets go with the database.
                secret["metadata"]["ownerReferences"] = [{**shapes.owner_reference(db), "controller": False}]
                self.core.create_namespaced_secret(namespace, secret)
            database_tls = DatabaseTls(ca, force_encryption=client_tls)
        self.fleet.certificates.set_database(namespace, name, database_tls)
        if auth_secret_type == shapes.BASIC_AUTH:
            self.core.create_namespaced_secret(namespace, shapes.auth_secret(db, password, active_from))
        activation = {"spec": {"authSecret": {"activeFrom": active_from}}}  # am patchAuthSecretRef
        db = self.custom.patch_namespaced_custom_object(
            shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, name, activation
        )
        self.custom.patch_namespaced_custom_object_status(
            shapes.GROUP,
            shapes.VERSION,
            namespace,
            shapes.PLURAL,
            name,
            {"status": {"phase": "Provisioning"}},
        )
        for service in shapes.services(db, replicas):
            self.core.create_namespaced_service(namespace, service)
        petsets = [shapes.petset(db, replicas)]
        if shapes.has_arbiter(replicas):
            petsets.append(shapes.arbiter_petset(db))
        for petset in petsets:
            self._create_custom(
                namespace, shapes.PETSET_GROUP, shapes.PETSET_VERSION, shapes.PETSET_PLURAL, petset
            )
        if pdb is not None:
            self.set_pdb(namespace, name, pdb)
        self._database_namespaces.add(namespace)
        handle = Database(self, namespace, name, replicas)
        self._wait(
            lambda: handle.get().get("status", {}).get("phase") == "Ready", f"{namespace}/{name} Ready"
        )
        if handle.arbiter is not None:  # not part of the phase, but part of what KubeDB creates
            arbiter = handle.arbiter
            self._wait(
                lambda: any(
                    podview.is_ready(p)
                    for p in podview.list_pods(
                        self.core, namespace, f"statefulset.kubernetes.io/pod-name={arbiter}"
                    )
                ),
                f"{namespace}/{arbiter} Ready",
            )
        return handle

    def _create_custom(
        self, namespace: str, group: str, version: str, plural: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
            group, version, namespace, plural, body
        )

    def failover(self, namespace: str, database: str, to_pod: str) -> None:
        """A switchover by the coordinator: every role label goes blank for ``role_election_delay``,
        then ``to_pod`` is primary and the others secondary. ``to_pod`` must be running (not
        necessarily Ready, e.g. after ALTER LOGIN). Returns once it is primary and every other running
        replica secondary."""
        assert self._coordinator is not None
        pod = podview.list_pods(self.core, namespace, f"statefulset.kubernetes.io/pod-name={to_pod}")
        if not pod or podview.is_terminating(pod[0]) or not podview.is_running(pod[0]):
            raise ValueError(f"{namespace}/{to_pod} is not running: it cannot become primary")
        self._coordinator.switchover(namespace, database, to_pod)

        def settled() -> bool:
            pods = podview.list_pods(self.core, namespace, f"{podview.INSTANCE_LABEL}={database}")
            replicas = [p for p in podview.database_replicas(pods, database) if podview.is_running(p)]
            return all(
                podview.role(p) == ("primary" if podview.name(p) == to_pod else "secondary") for p in replicas
            )

        self._wait(settled, f"{namespace}/{to_pod} primary and the other replicas secondary")

    def create_ops_request(
        self, namespace: str, database: str, type_: str = "Restart", name: str | None = None
    ) -> str:
        """Create an MSSQLServerOpsRequest for the database, in phase Pending; its name."""
        name = name or f"{database}-{type_.lower()}-{uuid.uuid4().hex[:6]}"
        body = shapes.ops_request(database, name, type_)
        self._create_custom(namespace, shapes.OPS_GROUP, shapes.OPS_VERSION, shapes.OPS_PLURAL, body)
        self.set_ops_request_phase(namespace, name, "Pending")
        return name

    def set_ops_request_phase(self, namespace: str, name: str, phase: str) -> None:
        """Write an ops request's status.phase through the status subresource (as the ops-manager)."""
        self.custom.patch_namespaced_custom_object_status(
            shapes.OPS_GROUP,
            shapes.OPS_VERSION,
            namespace,
            shapes.OPS_PLURAL,
            name,
            {"status": {"phase": phase}},
        )

    def set_pdb(self, namespace: str, database: str, spec: dict[str, Any] | None) -> None:
        """Create or change the PodDisruptionBudget ``<database>`` (``spec`` holds minAvailable or
        maxUnavailable; the selector is the database's; owned by the database), or delete it with
        None. Its status is the real disruption controller's."""
        if spec is None:
            with contextlib.suppress(NotFoundError):
                self.pdbs.delete(name=database, namespace=namespace)
            return
        db = self.custom.get_namespaced_custom_object(
            shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, database
        )
        body = shapes.pod_disruption_budget(db, spec)
        if self.read_pdb(namespace, database) is None:
            self.pdbs.create(body=body, namespace=namespace)
            return
        # A merge patch: null drops the bound not given (a PDB may not carry both).
        replaced = {"minAvailable": None, "maxUnavailable": None, **body["spec"]}
        self.pdbs.patch(
            body={"spec": replaced},
            name=database,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def read_pdb(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PodDisruptionBudget as the API server has it (spec and status), None if there is none."""
        try:
            found = self.pdbs.get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        return found.to_dict()  # type: ignore[no-any-return]
