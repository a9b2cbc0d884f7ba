"""Emulated mssql-coordinator: which replica of an Availability Group is primary, shown as labels.

Its business is only the pods that run both ``mssql`` and ``mssql-coordinator`` (AG replicas): a
standalone database has no coordinator and the arbiter holds no replica. Rules (docs
guides/mssqlserver/failover/guide.md; the real coordinator is closed source, the timing unverified):
- first bootstrap: ordinal 0 becomes ``primary`` once its container runs;
- a replica that starts while there is a primary becomes ``secondary``;
- when the primary pod goes (terminating or deleted), every surviving replica loses its role label
  for ``Settings.role_election_delay`` seconds; then the lowest-ordinal Ready, non-terminating replica
  that is synchronized (has caught up with the log, ``Settings.secondary_catch_up`` after its start)
  becomes primary and the others secondary; the old primary comes back as a secondary, or as the
  primary again when no synchronized replica could take over meanwhile;
- ``switchover()`` does the same on request, with a chosen target that only has to be running (an
  operator's planned failover does not wait for Kubernetes readiness).
Each instance's AG role (``InstanceState.role``, what sys.dm_hadr_availability_replica_states shows)
is set just before its label: PRIMARY, SECONDARY, or RESOLVING while the label is blank. Every label
change goes to the timeline as ``role-changed`` with ``role=<label>`` (empty when removed).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import podview
from sandbox.fleet import SqlFleet
from sandbox.podview import Pod, PodKey
from sandbox.settings import Settings
from sandbox.timeline import Timeline
from sandbox.timers import Timers

log = logging.getLogger("sandbox.coordinator")
INSTANCE_ROLES = {"primary": "PRIMARY", "secondary": "SECONDARY", "": "RESOLVING"}


@dataclass
class _Group:
    """What the coordinators of one database agree on between events."""

    primary: str | None = None  # the pod last made primary
    election_due: float | None = None  # monotonic time the blank window ends; None: no election
    target: str | None = None  # a switchover's chosen primary
    departed: str | None = None  # the primary that left; it comes back as a secondary


def is_ag_replica(pod: Pod) -> bool:
    return {"mssql", "mssql-coordinator"} <= podview.container_names(pod)


class Coordinator:
    def __init__(
        self, api: client.ApiClient, fleet: SqlFleet, timeline: Timeline, settings: Settings
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.fleet = fleet
        self.timeline = timeline
        self.settings = settings
        self._lock = threading.RLock()  # one decision at a time: watch thread and timers alike
        self._groups: dict[tuple[str, str], _Group] = {}
        self._timers = Timers("coordinator")

    def stop(self) -> None:
        self._timers.cancel_all()

    # -- inputs ------------------------------------------------------------------------------
    def on_pod(self, event: str, pod: Pod) -> None:
        database = podview.owner_petset(pod)
        if podview.is_kubedb_pod(pod) and is_ag_replica(pod) and database is not None:
            self._reconcile(pod["metadata"]["namespace"], database)

    def switchover(self, namespace: str, database: str, to_pod: str) -> None:
        """Start a planned failover to ``to_pod``: labels go blank, then it becomes primary."""
        with self._lock:
            group = self._groups.setdefault((namespace, database), _Group())
            if group.primary is None:
                raise RuntimeError(f"{namespace}/{database} has no primary to switch over from")
            self._start_election(namespace, database, group, departed=group.primary, target=to_pod)
            self._reconcile(namespace, database)

    # -- decisions ---------------------------------------------------------------------------
    def _reconcile(self, namespace: str, database: str) -> None:
        with self._lock:
            try:
                self._decide(namespace, database)
            except ApiException as exc:
                if exc.status not in (404, 409, 422):  # the pod changed under us: its event comes next
                    raise

    def _decide(self, namespace: str, database: str) -> None:
        group = self._groups.setdefault((namespace, database), _Group())
        pods = podview.list_pods(self.core, namespace, f"{podview.INSTANCE_LABEL}={database}")
        live = [p for p in podview.database_replicas(pods, database) if not podview.is_terminating(p)]
        live = [p for p in live if is_ag_replica(p)]
        has_primary = any(podview.role(p) == "primary" for p in live)
        if group.primary is not None and group.election_due is None and not has_primary:
            self._start_election(namespace, database, group, departed=group.primary, target=None)
        if group.election_due is not None:
            self._run_election(namespace, database, group, live)
            return
        if group.primary is None:
            zero = next((p for p in live if podview.ordinal(p) == 0 and podview.is_running(p)), None)
            if zero is None:
                return
            self._label(namespace, zero, "primary")
            group.primary = podview.name(zero)
        for pod in live:
            if podview.is_running(pod) and podview.role(pod) == "":
                self._label(namespace, pod, "secondary")

    def _start_election(
        self, namespace: str, database: str, group: _Group, *, departed: str | None, target: str | None
    ) -> None:
        delay = self.settings.role_election_delay
        group.election_due = time.monotonic() + delay
        group.departed, group.target = departed, target
        self._timers.later(delay, lambda: self._reconcile(namespace, database))

    def _run_election(self, namespace: str, database: str, group: _Group, live: list[Pod]) -> None:
        for pod in live:
            if podview.role(pod) != "":
                self._label(namespace, pod, "")
        assert group.election_due is not None
        if time.monotonic() < group.election_due:
            return
        winner = self._winner(namespace, group, live)
        if winner is None:
            # Nobody can take over yet: the next pod event (one turning Ready) decides again, or the
            # moment the first Ready replica has caught up.
            catching_up = [self._synchronizing_for(namespace, p) for p in live if podview.is_ready(p)]
            if catching_up:
                self._timers.later(min(catching_up), lambda: self._reconcile(namespace, database))
            return
        group.election_due = group.target = group.departed = None
        group.primary = podview.name(winner)
        self._label(namespace, winner, "primary")
        for pod in live:
            if pod is not winner and podview.is_running(pod):
                self._label(namespace, pod, "secondary")

    def _winner(self, namespace: str, group: _Group, live: list[Pod]) -> Pod | None:
        if group.target is not None:  # a planned switchover: the target only has to run
            return next((p for p in live if podview.name(p) == group.target and podview.is_running(p)), None)
        # An automatic failover only goes to a replica that has every committed transaction.
        ready = [p for p in live if podview.is_ready(p) and self._synchronizing_for(namespace, p) == 0.0]
        # The old primary, back already, waits its turn behind any other Ready replica.
        return min(ready, key=lambda p: (podview.name(p) == group.departed, podview.ordinal(p)), default=None)

    def _synchronizing_for(self, namespace: str, pod: Pod) -> float:
        key = PodKey(namespace, podview.name(pod))
        return self.fleet.volume(key).synchronizing_for() if self.fleet.has_volume(key) else 0.0

    def _label(self, namespace: str, pod: Pod, role: str) -> None:
        key = PodKey(namespace, podview.name(pod))
        if self.fleet.has_volume(key):
            self.fleet.volume(key).role = INSTANCE_ROLES[role]
        patch: dict[str, Any] = {
            "metadata": {"uid": pod["metadata"]["uid"], "labels": {podview.ROLE_LABEL: role or None}}
        }
        written = self.core.patch_namespaced_pod(key.name, namespace, patch)
        pod["metadata"]["labels"] = written.metadata.labels or {}  # later decisions in this pass see it
        self.timeline.record(
            "role-changed", namespace, key.name, written.metadata.resource_version, detail=f"role={role}"
        )
