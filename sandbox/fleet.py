"""The SQL Server instances behind the pods: one data volume (``InstanceState``) per pod that
outlives the pod, a loopback IP per pod that stays the same across restarts, and the TDS server
that runs while the pod's container runs."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from sandbox.sqlserver import InstanceState, TdsServer


@dataclass(frozen=True)
class PodKey:
    namespace: str
    name: str


class SqlFleet:
    def __init__(self, port: int) -> None:
        self.port = port
        self._lock = threading.Lock()
        self._volumes: dict[PodKey, InstanceState] = {}
        self._servers: dict[PodKey, TdsServer] = {}
        self._ips: dict[PodKey, str] = {}
        # A random second octet keeps two sandboxes on one machine (a developer's and CI's) apart.
        self._octet = 16 + secrets.randbelow(224)

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

    def ip_of(self, key: PodKey) -> str:
        with self._lock:
            if key not in self._ips:
                n = len(self._ips)
                self._ips[key] = f"127.{self._octet}.{n // 250}.{n % 250 + 2}"
            return self._ips[key]

    def start(self, key: PodKey) -> None:
        server = TdsServer(self.volume(key), self.ip_of(key), self.port)
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
