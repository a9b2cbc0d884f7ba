"""The SQL Server instances behind the pods: one data volume (``InstanceState``) per pod name that
outlives the pod, the address the pod's current container listens on, and the TDS server that runs
while that container runs. Addresses come from ``sandbox.addresses``; this module only keeps them.

TLS: at each start the instance is given the certificate ``sandbox.tls`` issues for the pod and its
current address (and the database's force-encryption setting); a certificate fault switch applies
to a running server at once. The fleet also answers the leak checks over every instance: what
reached them in clear text, and which ever got an ALTER LOGIN outside TLS."""

from __future__ import annotations

import threading

from sandbox.addresses import AddressPlan
from sandbox.podview import PodKey
from sandbox.sqlserver import InstanceState, TdsServer
from sandbox.tls import PodCertificates

__all__ = ["PodKey", "SqlFleet"]


class SqlFleet:
    def __init__(self, plan: AddressPlan, certificates: PodCertificates | None = None) -> None:
        self.plan = plan
        self.certificates = certificates or PodCertificates()
        self._lock = threading.Lock()
        self._tls_lock = threading.Lock()  # one certificate decision per instance at a time
        self._volumes: dict[PodKey, InstanceState] = {}
        self._servers: dict[PodKey, TdsServer] = {}
        self._addresses: dict[PodKey, tuple[str, int]] = {}  # the current (or last) container's
        self._retired: list[tuple[PodKey, InstanceState]] = []  # volumes of removed databases

    def provision(self, key: PodKey, sa_password: str, *, hadr: bool) -> InstanceState:
        """Initialise an empty data directory, as SQL Server does with MSSQL_SA_PASSWORD."""
        with self._lock:
            state = InstanceState(key.name, sa_password, hadr_enabled=hadr)
            self._volumes[key] = state
            return state

    def volume(self, key: PodKey) -> InstanceState:
        with self._lock:
            return self._volumes[key]

    def has_volume(self, key: PodKey) -> bool:
        with self._lock:
            return key in self._volumes

    def set_address(self, key: PodKey, host: str, port: int) -> None:
        """Where the pod's container listens (or would, if it could start)."""
        with self._lock:
            self._addresses[key] = (host, port)

    def address_of(self, key: PodKey) -> tuple[str, int]:
        """(host, port) of the pod's current container; KeyError before its first start."""
        with self._lock:
            return self._addresses[key]

    def start(self, key: PodKey, database: str | None = None) -> None:
        """Serve the pod's volume on its current address with the certificate its database gives it
        (a self-signed one for a database the sandbox did not create); OSError when the address is
        taken."""
        host, port = self.address_of(key)
        volume = self.volume(key)
        with self._tls_lock:  # a fault switch flipped meanwhile waits, then sees this server running
            self._configure_tls(volume, key, database, host)
            server = TdsServer(volume, host, port)
            server.start()
            with self._lock:
                self._servers[key] = server

    def serve_certificate(self, key: PodKey, database: str | None, kind: str) -> None:
        """Fault switch (see sandbox.tls.CERTIFICATE_KINDS): from now on, for new connections to the
        running server and at every later start."""
        self.certificates.set_kind(key, database, kind)
        with self._tls_lock:
            with self._lock:
                running = key in self._servers
                host = self._addresses.get(key, ("", 0))[0]
            if running:
                self._configure_tls(self.volume(key), key, database, host)

    def _configure_tls(self, volume: InstanceState, key: PodKey, database: str | None, host: str) -> None:
        certificate, force = self.certificates.serving(key, database, host)
        volume.configure_tls(certificate, force_encryption=force)

    def stop(self, key: PodKey) -> None:
        with self._lock:
            server = self._servers.pop(key, None)
        if server is not None:
            server.stop()

    def wait_idle(self, key: PodKey, timeout: float = 5.0) -> bool:
        """Wait until the pod's running SQL Server has no client connection open (each one's record
        is complete); True at once when none runs, False on timeout."""
        with self._lock:
            server = self._servers.get(key)
        return server is None or server.wait_idle(timeout)

    def running(self, key: PodKey) -> bool:
        with self._lock:
            return key in self._servers

    def running_in(self, namespace: str) -> list[PodKey]:
        """The pods of ``namespace`` whose SQL Server runs."""
        with self._lock:
            return [key for key in self._servers if key.namespace == namespace]

    def retire(self, namespace: str) -> None:
        """Forget the volumes of ``namespace``'s stopped pods, as deleting a database with its PVCs
        does (a database created again under the same name starts empty); their records stay in
        ``instances()`` for the session-wide checks."""
        with self._lock:
            for key in [key for key in self._volumes if key.namespace == namespace]:
                if key not in self._servers:
                    self._retired.append((key, self._volumes.pop(key)))
                    self._addresses.pop(key, None)

    def every_password(self) -> set[str]:
        """Every password any instance ever had."""
        return set().union(*(volume.every_password() for _, volume in self.instances()))

    def instances(self) -> list[tuple[PodKey, InstanceState]]:
        """Every instance's volume, by namespace and pod name, those of removed databases too."""
        with self._lock:
            found = [*self._retired, *self._volumes.items()]
        return sorted(found, key=lambda item: (item[0].namespace, item[0].name))

    def clear_text_wire(self) -> list[str]:
        """What reached any instance outside TLS, decoded (LOGIN7 user names and passwords, batch
        SQL, RPC payloads), each instance's distinct entries in arrival order."""
        return [entry.text for _, volume in self.instances() for entry in volume.clear_text]

    def clear_text_dropped(self) -> int:
        """How many distinct clear-text entries the instances had no room for (0: the record is whole)."""
        return sum(volume.clear_text_dropped for _, volume in self.instances())

    def unencrypted_alter_logins(self) -> list[PodKey]:
        """The instances that ever got an ALTER LOGIN batch outside TLS."""
        return [key for key, volume in self.instances() if volume.alter_login_arrived_unencrypted()]

    def stop_all(self) -> None:
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.stop()
