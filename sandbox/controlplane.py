"""A real etcd + kube-apiserver on free loopback ports, in a temporary folder.

Authentication is a static token file (an admin in ``system:masters``) plus service-account tokens
minted through the TokenRequest API; authorization is RBAC, so tests can run as a restricted identity.
Nothing else of Kubernetes runs: the emulated controllers in ``sandbox.kubelet`` and
``sandbox.provisioner`` play that part.
"""

from __future__ import annotations

import contextlib
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


class ControlPlaneError(RuntimeError):
    """etcd or kube-apiserver failed to start."""


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
        binaries = ensure_binaries()
        self._pki = write_pki(self.workdir / "pki")
        try:
            etcd_url = self._start_etcd(binaries / "etcd")
            self._start_apiserver(binaries / "kube-apiserver", etcd_url)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.write_kubeconfig(self.kubeconfig, user=ADMIN_USER, token=self.admin_token)

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
                "--disable-admission-plugins=ServiceAccount",
                # Nothing here needs API priority and fairness; leaving it on costs start-up time.
                "--enable-priority-and-fairness=false",
                f"--cert-dir={self.workdir / 'certs'}",
                "--v=0",
            ],
        )

    def _wait_ready(self) -> None:
        assert self._pki is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        request = urllib.request.Request(  # noqa: S310 (an https URL we built)
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
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
            time.sleep(0.1)  # polling an HTTP endpoint: there is nothing to watch yet
        raise ControlPlaneError(
            f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f}s; logs in {self.workdir}"
        )

    def write_kubeconfig(self, path: Path, *, user: str, token: str, namespace: str = "default") -> Path:
        return write_kubeconfig(
            path, server=self.server, ca_cert=self.ca_cert, user=user, token=token, namespace=namespace
        )

    def stop(self) -> None:
        self._processes.stop(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
