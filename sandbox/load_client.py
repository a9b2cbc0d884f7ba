"""An application of the database, to measure what a rotation costs the clients of its primary.

It behaves like one pod of an application:

- **password**: ``MOUNTED`` reads the auth secret as a pod that mounts it as a volume does: it sees a
  change ``Settings.secret_propagation_delay`` seconds after it was written (the kubelet's sync).
  ``AT_START`` reads it once, as a pod that gets it through an env variable.
- **where**: through the primary Service ``<db>``: the ready endpoints of its EndpointSlices (the real
  EndpointSlice controller fills them from the pods' role labels), each reached at its pod's address
  with TDS 8.0 strict TLS, the certificate verified against the database's CA and the pod's DNS name,
  as the rotation does (rotation/sqlserver.py).
- **what**: every ``interval`` (100 ms) one short transaction (an INSERT, committed) on a connection it
  keeps, as a connection pool does; with no connection it logs in first; an error drops the connection.

Every attempt is one ``Sample``; ``summarize`` turns a window of them into what a rotation cost: seconds
without a writable primary, failed logins, failed writes and the longest gap between two writes.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pymssql
from kubernetes import client

from rotation import constants as c
from rotation.errors import RotationError
from rotation.kube import secret_text
from rotation.params import TlsVerify
from rotation.passwords import Password
from rotation.plan import Endpoint
from rotation.sqlserver import open_connection
from rotation.tls import CA_KEY, TlsProfile, pod_dns_name

INTERVAL_S: Final = 0.1
SECRET_POLL_S: Final = 0.2
WRITE: Final = "INSERT INTO dbo.availability_probe (at) VALUES (1)"  # committed: a short transaction
NOT_PRIMARY_ERRORS: Final = (3906, 983)  # read-only (a secondary); not PRIMARY or SECONDARY (resolving)


class PasswordSource(enum.Enum):
    MOUNTED = "mounted"  # a volume: sees a change after the kubelet's sync delay
    AT_START = "at-start"  # an env variable: read when the container starts, never again


class Outcome(enum.Enum):
    WROTE = "wrote"
    NO_PRIMARY = "no-primary"  # no ready endpoint, nothing listening, or a replica that is not primary
    LOGIN_REJECTED = "login-rejected"  # the password it has is not the server's
    WRITE_FAILED = "write-failed"  # the connection broke under the write


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic time the attempt started
    outcome: Outcome
    write_attempted: bool  # a write was sent on an open connection (its failure is a failed write)


@dataclass(frozen=True)
class Availability:
    """What the application saw over one window (one rotation)."""

    seconds: float
    writes: int
    no_primary_s: float
    failed_logins: int
    failed_writes: int
    longest_gap_s: float

    def row(self, label: str) -> str:
        return (
            f"| {label} | {self.seconds:.1f} | {self.writes} | {self.no_primary_s:.2f} | "
            f"{self.failed_logins} | {self.failed_writes} | {self.longest_gap_s:.2f} |"
        )


TABLE_HEADER: Final = (
    "| client | window s | writes | s without a writable primary | failed logins | failed writes | "
    "longest gap s |\n|---|---:|---:|---:|---:|---:|---:|"
)


def summarize(samples: Sequence[Sample], start: float, end: float) -> Availability:
    """The samples of [start, end] as what the application saw. Pure.

    Each sample's outcome lasts until the next sample (or ``end``); time spent in ``NO_PRIMARY`` is
    time without a writable primary. The longest gap runs between successful writes, counting from
    ``start`` and to ``end``.
    """
    window = [s for s in samples if start <= s.at <= end]
    no_primary = 0.0
    for sample, until in zip(window, [*(s.at for s in window[1:]), end], strict=False):
        if sample.outcome is Outcome.NO_PRIMARY:
            no_primary += until - sample.at
    wrote = [s.at for s in window if s.outcome is Outcome.WROTE]
    edges = [start, *wrote, end]
    return Availability(
        seconds=end - start,
        writes=len(wrote),
        no_primary_s=no_primary,
        failed_logins=sum(s.outcome is Outcome.LOGIN_REJECTED for s in window),
        failed_writes=sum(s.write_attempted and s.outcome is not Outcome.WROTE for s in window),
        longest_gap_s=max(b - a for a, b in itertools.pairwise(edges)),
    )


class LoadClient:
    """A thread writing to the database's primary every ``interval``; ``samples`` says how it went."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        database: str,
        *,
        source: PasswordSource = PasswordSource.MOUNTED,
        propagation_delay: float = 10.0,
        interval: float = INTERVAL_S,
        deployment: str | None = None,
    ) -> None:
        self.namespace, self.database = namespace, database
        self.source, self.propagation_delay, self.interval = source, propagation_delay, interval
        self.deployment = deployment  # AT_START: the Deployment whose rollout restarts this application
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._tls = self._profile()
        self._username, seen = self._read_secret()
        self._visible = seen  # the password the application has now
        self._upcoming: tuple[Password, float] | None = None  # (value, when it becomes visible)
        self._threads = [
            threading.Thread(target=self._write_loop, name=f"load-{database}", daemon=True),
            threading.Thread(target=self._secret_loop, name=f"load-secret-{database}", daemon=True),
        ]
        self._connection: Any = None
        self._drop_requested = False

    def __enter__(self) -> LoadClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._drop()

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def wait_for_writes(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` writes succeeded in a row (the application is up and writing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.samples[-count:]
            if len(recent) == count and all(s.outcome is Outcome.WROTE for s in recent):
                return
            time.sleep(self.interval)
        raise TimeoutError(f"{self.namespace}/{self.database}: the load client did not write {count} times")

    # -- the application's loop --------------------------------------------------------------
    def _write_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            outcome, wrote = self._attempt()
            with self._lock:
                self._samples.append(Sample(started, outcome, wrote))
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _attempt(self) -> tuple[Outcome, bool]:
        if self._drop_requested:  # its pod was replaced: a new process, a new connection
            self._drop_requested = False
            self._drop()
        if self._connection is None:
            endpoint = self._primary_endpoint()
            if endpoint is None:
                return Outcome.NO_PRIMARY, False
            try:
                self._connection = open_connection(endpoint, self._username, self._password())
            except PermissionError:
                return Outcome.LOGIN_REJECTED, False
            except RotationError:  # unreachable (its pod is going), or TLS refused
                return Outcome.NO_PRIMARY, False
        try:
            self._connection.cursor().execute(WRITE)
            self._connection.commit()
            return Outcome.WROTE, True
        except pymssql.Error as exc:
            self._drop()
            number = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            return (Outcome.NO_PRIMARY if number in NOT_PRIMARY_ERRORS else Outcome.WRITE_FAILED), True

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(pymssql.Error):
                connection.close()

    def _primary_endpoint(self) -> Endpoint | None:
        """A ready endpoint of the primary Service, as a client's DNS lookup of ``<db>`` would give."""
        slices = self._custom.list_namespaced_custom_object(
            "discovery.k8s.io",
            "v1beta1",
            self.namespace,
            "endpointslices",
            label_selector=f"kubernetes.io/service-name={self.database}",
        )["items"]
        for piece in slices:
            port = next((p.get("port") for p in piece.get("ports") or [] if p.get("port")), None)
            for point in piece.get("endpoints") or []:
                pod = (point.get("targetRef") or {}).get("name")
                ready = (point.get("conditions") or {}).get("ready", True)
                if pod and port and ready and point.get("addresses"):
                    name = pod_dns_name(pod, self.database, self.namespace)
                    return Endpoint(pod, point["addresses"][0], int(port), name, self._tls)
        return None

    # -- what the application knows ----------------------------------------------------------
    def _password(self) -> Password:
        with self._lock:
            if self._upcoming is not None and time.monotonic() >= self._upcoming[1]:
                self._visible, self._upcoming = self._upcoming[0], None
            return self._visible

    def _secret_loop(self) -> None:
        if self.source is PasswordSource.AT_START:
            self._restart_loop()
            return
        while not self._stop.wait(SECRET_POLL_S):
            _, written = self._read_secret()
            with self._lock:
                pending = self._upcoming[0] if self._upcoming is not None else self._visible
                if written.reveal() != pending.reveal():
                    self._upcoming = (written, time.monotonic() + self.propagation_delay)

    def _restart_loop(self) -> None:
        """An env-reading application gets the new password when its pods are replaced: here, when its
        Deployment's pod template changes (``kubectl rollout restart``, the rotation's workload step)."""
        if self.deployment is None:
            return
        seen = self._template_version()
        while not self._stop.wait(SECRET_POLL_S):
            version = self._template_version()
            if version != seen:
                seen = version
                _, fresh = self._read_secret()
                with self._lock:
                    self._visible = fresh
                self._drop_requested = True

    def _template_version(self) -> str:
        assert self.deployment is not None
        deployment = self._apps.read_namespaced_deployment(self.deployment, self.namespace)
        annotations = deployment.spec.template.metadata.annotations or {}
        return str(annotations.get("kubectl.kubernetes.io/restartedAt", ""))

    def _read_secret(self) -> tuple[str, Password]:
        db = self._custom.get_namespaced_custom_object(
            c.DB_GROUP, c.DB_VERSION, self.namespace, c.DB_PLURAL, self.database
        )
        name = (db["spec"].get("authSecret") or {}).get("name") or f"{self.database}-auth"
        secret = self._core.read_namespaced_secret(name, self.namespace)
        where = f"Secret {self.namespace}/{name}"
        username = secret_text(secret.data, "username", where=where) or "sa"
        return username, Password(secret_text(secret.data, "password", where=where) or "")

    def _profile(self) -> TlsProfile:
        name = f"{self.database}-server-cert"
        secret = self._core.read_namespaced_secret(name, self.namespace)
        ca = secret_text(secret.data, CA_KEY, where=f"Secret {self.namespace}/{name}")
        return TlsProfile(
            verify=TlsVerify.VERIFY_FULL, ca_pem=ca, ca_source=f"Secret {self.namespace}/{name}"
        )
