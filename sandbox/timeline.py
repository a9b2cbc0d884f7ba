"""An inspectable record of what the emulated KubeDB observed, ordered by resourceVersion.

Each entry says whether each database of its namespace was paused at that moment. Watches of
different resources deliver events in no common order, so the paused state is not taken from
"what the provisioner had seen when the entry arrived" but computed from the resourceVersions:
etcd revisions are global and monotonic, and the sandbox owns its etcd.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    resource_version: int
    # secret-written, secret-deleted, pod-terminating (detail "role=<label>", empty without one),
    # pod-deleted, pod-started, role-changed (detail "role=<label>"), paused, resumed
    kind: str
    namespace: str
    name: str
    detail: str = ""
    paused: dict[str, bool] = field(default_factory=dict)  # database -> paused at this moment


class Timeline:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._raw: list[tuple[int, str, str, str, str]] = []
        # per (namespace, database): sorted resourceVersions and the paused state from each on
        self._pause_history: dict[tuple[str, str], tuple[list[int], list[bool]]] = {}
        self._seen_db_versions: dict[tuple[str, str], int] = {}

    def record(
        self, kind: str, namespace: str, name: str, resource_version: str | int, detail: str = ""
    ) -> None:
        with self._lock:
            self._raw.append((int(resource_version), kind, namespace, name, detail))
            self._lock.notify_all()

    def observe_database(self, namespace: str, name: str, resource_version: str | int, paused: bool) -> None:
        """Called for every MSSQLServer event; records pause transitions."""
        rv = int(resource_version)
        with self._lock:
            versions, states = self._pause_history.setdefault((namespace, name), ([], []))
            index = bisect.bisect_right(versions, rv)
            before = states[index - 1] if index else False
            if before != paused:
                versions.insert(index, rv)
                states.insert(index, paused)
                self._raw.append((rv, "paused" if paused else "resumed", namespace, name, ""))
            key = (namespace, name)
            self._seen_db_versions[key] = max(rv, self._seen_db_versions.get(key, 0))
            self._lock.notify_all()

    def wait_for_database_version(
        self, namespace: str, name: str, resource_version: int, timeout: float
    ) -> None:
        """Block until the database's events up to ``resource_version`` have been observed."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._seen_db_versions.get((namespace, name), 0) < resource_version:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timeline has not seen {namespace}/{name} at rv {resource_version}")
                self._lock.wait(remaining)

    def _paused_at(self, namespace: str, rv: int) -> dict[str, bool]:
        result = {}
        for (ns, db), (versions, states) in self._pause_history.items():
            if ns == namespace:
                index = bisect.bisect_right(versions, rv)
                result[db] = states[index - 1] if index else False
        return result

    def entries(self, namespace: str | None = None) -> list[Entry]:
        with self._lock:
            raw = sorted(self._raw)
            return [
                Entry(rv, kind, ns, name, detail, self._paused_at(ns, rv))
                for rv, kind, ns, name, detail in raw
                if namespace is None or ns == namespace
            ]
