"""The SQL Server instances behind the pods: one data volume (``InstanceState``) per pod name that
outlives the pod, the address the pod's current container listens on, and the TDS server that runs
while that container runs. Addresses come from ``sandbox.addresses``; this module only keeps them."""

from __future__ import annotations

import threading

from sandbox.addresses import AddressPlan
from sandbox.podview import PodKey
from sandbox.sqlserver import InstanceState, TdsServer

__all__ = ["PodKey", "SqlFleet"]


class SqlFleet:
    def __init__(self, plan: AddressPlan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self._volumes: dict[PodKey, InstanceState] = {}
        self._servers: dict[PodKey, TdsServer] = {}
        self._addresses: dict[PodKey, tuple[str, int]] = {}  # the current (or last) container's

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

    def start(self, key: PodKey) -> None:
        """Serve the pod's volume on its current address; OSError when the address is taken."""
        host, port = self.address_of(key)
        server = TdsServer(self.volume(key), host, port)
        server.start()
        with self._lock:
            self._servers[key] = server

    def stop(self, key: PodKey) -> None:
        with self._lock:
            server = self._servers.pop(key, None)
        if server is not None:
            server.stop()

    def running(self, key: PodKey) -> bool:
        with self._lock:
            return key in self._servers

    def every_password(self) -> set[str]:
        """Every password any instance ever had."""
        with self._lock:
            volumes = list(self._volumes.values())
        return set().union(*(volume.every_password() for volume in volumes))

    def stop_all(self) -> None:
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.stop()
