"""A real etcd + kube-apiserver on free loopback ports, and a real kube-controller-manager and
kube-scheduler, in a temporary folder.

Authentication is a static token file (an admin in ``system:masters``) plus service-account tokens
minted through the TokenRequest API; authorization is RBAC, so tests can run as a restricted identity.

The controller-manager runs the controllers listed in ``CONTROLLERS`` (garbage collection, disruption
budgets, EndpointSlices, Deployments, ReplicaSets, Jobs and their finished TTL, namespaces, service
accounts); the scheduler binds pods to the one Node the kubelet emulation (``sandbox.kubelet``)
registers. Both use the admin kubeconfig, no leader election and no serving port (nothing to collide
between parallel sandboxes): they are known to be up by their first effect. ``start()`` is
``start_api()`` then ``start_controllers()``; the Sandbox installs its CRDs in between, so the
garbage collector and the disruption controller know the custom kinds from their first discovery.

Not run, on purpose: the token controller (pods get tokens through the TokenRequest API, as the
kubelet does) and with it the API server's ServiceAccount admission plugin, which would refuse every
pod created in a fresh namespace before the serviceaccount controller has made its ``default``
account and would mount token Secrets nobody creates; node lifecycle (the kubelet emulation keeps no
node lease, so it would mark the node NotReady and evict everything); the StatefulSet controller
(PetSets are KubeDB's, emulated by ``sandbox.kubelet``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sandbox.binaries import ensure_binaries
from sandbox.pki import Pki, write_pki
from sandbox.processes import ProcessExited, ProcessGroup

ADMIN_USER = "sandbox-admin"
READY_TIMEOUT_S = 60.0
# kube-controller-manager --controllers: exactly these, nothing by default.
CONTROLLERS = (
    "garbagecollector",
    "disruption",
    # Not "endpoint": the API server refuses v1 Endpoints with loopback addresses (validateNonSpecialIP)
    # and every sandbox pod has one; EndpointSlices take them, so their controller fills the Services.
    "endpointslice",
    "replicaset",
    "deployment",
    "job",
    "ttl-after-finished",
    "namespace",
    "serviceaccount",
)
# The audit log records writes of Secrets, at the Metadata level (who, what, when: never a value).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "resources": [{"group": "", "resources": ["secrets"]}],
            "verbs": ["create", "update", "patch", "delete"],
        },
        {"level": "None"},
    ],
}
# Job.spec.ttlSecondsAfterFinished is alpha in 1.20: the API server drops the field without the gate.
FEATURE_GATES = "TTLAfterFinished=true"


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or ended."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(
    path: Path, *, server: str, ca_cert: Path, user: str, token: str, namespace: str = "default"
) -> Path:
    """A kubeconfig (mode 0600) for ``server``, verified with ``ca_cert``, authenticating with ``token``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sandbox", "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "sandbox", "user": user, "namespace": namespace}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """Owns the two server processes and the files they need; ``stop()`` removes all of it."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mssql-sandbox-")))
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_port: int = 0
    _pki: Pki | None = None

    def __post_init__(self) -> None:
        self._processes = ProcessGroup(self.workdir)
        self._binaries = Path()  # set by start_api()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_cert(self) -> Path:
        assert self._pki is not None
        return self._pki.ca_cert

    def start(self) -> None:
        """The whole control plane: ``start_api()`` then ``start_controllers()``."""
        self.start_api()
        self.start_controllers()

    def start_api(self) -> None:
        """etcd and kube-apiserver, ready; the admin kubeconfig written."""
        self._binaries = ensure_binaries()
        self._pki = write_pki(self.workdir / "pki")
        try:
            etcd_url = self._start_etcd(self._binaries / "etcd")
            self._start_apiserver(self._binaries / "kube-apiserver", etcd_url)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.write_kubeconfig(self.kubeconfig, user=ADMIN_USER, token=self.admin_token)

    def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler, once the API server is ready. Returns when
        the controller-manager's controllers run (its serviceaccount controller has made the
        ``default`` ServiceAccount of ``default``: its informers have synced). The scheduler has
        nothing to show before a Node exists; the Sandbox waits for its first binding."""
        try:
            common = [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--port=0",  # no insecure serving
                "--secure-port=0",  # no secure serving: no port to collide, no delegated auth
                "--v=1",
            ]
            self._processes.spawn(
                "kube-controller-manager",
                [
                    str(self._binaries / "kube-controller-manager"),
                    *common,
                    f"--controllers={','.join(CONTROLLERS)}",
                    f"--feature-gates={FEATURE_GATES}",
                ],
            )
            self._processes.spawn("kube-scheduler", [str(self._binaries / "kube-scheduler"), *common])
            self._wait_for_controller_manager()
        except BaseException:
            self.stop()
            raise

    def _start_etcd(self, etcd: Path) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self._processes.spawn(
            "etcd",
            [
                str(etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--log-level=warn",
            ],
        )
        return url

    def _start_apiserver(self, apiserver: Path, etcd_url: str) -> None:
        assert self._pki is not None
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)
        self.api_port = free_port()
        self._processes.spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                f"--secure-port={self.api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--tls-cert-file={self._pki.serving_cert}",
                f"--tls-private-key-file={self._pki.serving_key}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",
                "--service-account-issuer=https://sandbox.mssql-auth-rotation.local",
                f"--service-account-key-file={self._pki.service_account_pub}",
                f"--service-account-signing-key-file={self._pki.service_account_key}",
                "--service-cluster-ip-range=10.0.0.0/16",  # room for every test's services
                # No token controller runs (see the module's docstring), so no ServiceAccount admission;
                # no node lifecycle controller either, which is what lifts the not-ready taint that
                # TaintNodesByCondition puts on every new Node.
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                f"--feature-gates={FEATURE_GATES}",
                # Nothing here needs API priority and fairness; leaving it on costs start-up time.
                "--enable-priority-and-fairness=false",
                # pods/log reaches the kubelet emulation's log endpoint (sandbox/process_pods.py) at
                # the Node's InternalIP, 127.0.0.1: its Hostname resolves nowhere.
                "--kubelet-preferred-address-types=InternalIP",
                # Who wrote which Secret (tests check the rotation's identity); metadata only, no values.
                f"--audit-policy-file={self._write_audit_policy()}",
                f"--audit-log-path={self.audit_log}",
                f"--cert-dir={self.workdir / 'certs'}",
                "--v=0",
            ],
        )

    def _wait_ready(self) -> None:
        self._wait_for_200("/readyz", "kube-apiserver not ready", poll_s=0.1)

    def _wait_for_controller_manager(self) -> None:
        # The controller-manager has no endpoint to watch: its first effect is the default account.
        self._wait_for_200(
            "/api/v1/namespaces/default/serviceaccounts/default",
            "kube-controller-manager made no default ServiceAccount",
            poll_s=0.05,
        )

    def _wait_for_200(self, path: str, failure: str, *, poll_s: float) -> None:
        """Until the API server answers ``path`` with 200 (as the admin), while every process lives."""
        assert self._pki is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        request = urllib.request.Request(  # noqa: S310 (an https URL we built)
            f"{self.server}{path}", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self._processes.check_alive()
            except ProcessExited as exc:
                raise ControlPlaneError(str(exc)) from None
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(request, context=context, timeout=2) as reply,  # noqa: S310
            ):
                if reply.status == 200:
                    return
            time.sleep(poll_s)  # polling an HTTP endpoint: there is nothing to watch
        raise ControlPlaneError(f"{failure} after {READY_TIMEOUT_S:.0f}s; logs in {self.workdir}")

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _write_audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(AUDIT_POLICY))
        return path

    def audit_users(self, *, namespace: str, resource: str, name: str, verbs: set[str]) -> set[str]:
        """The users whose ``verbs`` on one object the API server carried out (its audit log)."""
        users: set[str] = set()
        if not self.audit_log.exists():
            return users
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef", {})
            if (
                event.get("stage") == "ResponseComplete"
                and event.get("verb") in verbs
                and (ref.get("namespace"), ref.get("resource"), ref.get("name"))
                == (namespace, resource, name)
                and 200 <= event.get("responseStatus", {}).get("code", 0) < 300
            ):
                users.add(str(event["user"]["username"]))
        return users

    def check_alive(self) -> None:
        """ControlPlaneError naming the first server process that has exited, with its log."""
        try:
            self._processes.check_alive()
        except ProcessExited as exc:
            raise ControlPlaneError(str(exc)) from None

    def write_kubeconfig(self, path: Path, *, user: str, token: str, namespace: str = "default") -> Path:
        return write_kubeconfig(
            path, server=self.server, ca_cert=self.ca_cert, user=user, token=token, namespace=namespace
        )

    def stop(self) -> None:
        self._processes.stop(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
