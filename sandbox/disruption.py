"""Emulated disruption controller: computes PodDisruptionBudget status, so the REAL API server's
eviction handler can grant or refuse evictions (429 with a DisruptionBudget cause naming the PDB).

The arithmetic is Kubernetes 1.20's pkg/controller/disruption/disruption.go (trySync):
- pods: those the selector matches (terminating ones included); an empty selector matches none;
- expected pods: for maxUnavailable (or a percentage minAvailable) the sum of the owning
  controllers' replicas (each PetSet counted once), for an integer minAvailable the matching pods;
- disrupted pods: the API server's ``status.disruptedPods`` entries (written by evictions) whose pod
  still exists, is not terminating and was disrupted less than ``DELETION_TIMEOUT_S`` ago;
- currentHealthy: matching pods that are Ready, not terminating and not disrupted;
- disruptionsAllowed = max(0, currentHealthy - desiredHealthy) (0 when no pods are expected).
Status is written through the status subresource with the PDB's resourceVersion (a PUT; on 409 it
is recomputed from a fresh read, which keeps an eviction's concurrent entry). It is recomputed on
every pod or PDB event of the namespace and when a disrupted-pod entry expires.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox import podview
from sandbox.pdb_api import PolicyV1beta1
from sandbox.podview import Pod
from sandbox.timers import Timers

log = logging.getLogger("sandbox.disruption")
DELETION_TIMEOUT_S = 120.0  # disruption.go DeletionTimeout: an evicted pod should be gone by then
CONFLICT_RETRIES = 10
STATUS_FIELDS = (
    "currentHealthy",
    "desiredHealthy",
    "expectedPods",
    "disruptionsAllowed",
    "disruptedPods",
    "observedGeneration",
)

PDB = dict[str, Any]


def label_selector(selector: dict[str, Any] | None) -> str | None:
    """A LabelSelector as a selector string; None for an empty one (matches nothing in v1beta1)."""
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values") or [])
        terms.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key}.get(
                op, f"!{key}"
            )
        )
    return ",".join(terms) or None


def _scaled(value: int | str, total: int, *, round_up: bool) -> int:
    """intstr.GetValueFromIntOrPercent."""
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    exact = percent * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def compute_status(pdb: PDB, pods: list[Pod], controller_scale: int, now: dt.datetime) -> dict[str, Any]:
    """The status the 1.20 disruption controller writes, given the matching pods and the summed
    replicas of their controllers (``controller_scale``)."""
    spec = pdb.get("spec") or {}
    if spec.get("maxUnavailable") is not None:
        expected = controller_scale
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected, round_up=True))
    elif isinstance(spec.get("minAvailable"), int):
        expected = len(pods)
        desired = spec["minAvailable"]
    elif spec.get("minAvailable") is not None:
        expected = controller_scale
        desired = _scaled(spec["minAvailable"], expected, round_up=True)
    else:
        expected = desired = 0
    recorded = (pdb.get("status") or {}).get("disruptedPods") or {}
    disrupted = {
        podview.name(p): recorded[podview.name(p)]
        for p in pods
        if not podview.is_terminating(p)
        and podview.name(p) in recorded
        and (now - _parse_time(recorded[podview.name(p)])).total_seconds() < DELETION_TIMEOUT_S
    }
    healthy = sum(
        1
        for p in pods
        if not podview.is_terminating(p) and podview.name(p) not in disrupted and podview.is_ready(p)
    )
    allowed = healthy - desired if expected > 0 else 0
    status: dict[str, Any] = {
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": max(0, allowed),
        "observedGeneration": pdb["metadata"].get("generation", 0),
    }
    if disrupted:
        status["disruptedPods"] = disrupted
    return status


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(current.get(f) == wanted.get(f) for f in STATUS_FIELDS if f != "disruptedPods") and (
        (current.get("disruptedPods") or {}) == (wanted.get("disruptedPods") or {})
    )


class DisruptionController:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.pdbs = PolicyV1beta1(api)
        self._lock = threading.RLock()
        self._names: dict[str, set[str]] = {}  # namespace -> its PDBs
        self._timers = Timers("disruption")
        self._rechecks: set[tuple[str, str, str]] = set()  # (namespace, PDB, disruption time) scheduled

    def stop(self) -> None:
        self._timers.cancel_all()

    def on_pdb(self, event: str, pdb: PDB) -> None:
        namespace, name = pdb["metadata"]["namespace"], pdb["metadata"]["name"]
        with self._lock:
            names = self._names.setdefault(namespace, set())
            if event == "DELETED":
                names.discard(name)
                return
            names.add(name)
        self._sync(namespace, name)

    def on_pod(self, event: str, pod: Pod) -> None:
        namespace = pod["metadata"]["namespace"]
        with self._lock:
            names = sorted(self._names.get(namespace, ()))
        for name in names:
            self._sync(namespace, name)

    def _sync(self, namespace: str, name: str) -> None:
        with self._lock:
            try:
                self._try_sync(namespace, name)
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("PDB %s/%s: %s", namespace, name, exc.reason)

    def _try_sync(self, namespace: str, name: str) -> None:
        for _ in range(CONFLICT_RETRIES):
            pdb = self.pdbs.read(namespace, name)
            selector = label_selector((pdb.get("spec") or {}).get("selector"))
            pods = podview.list_pods(self.core, namespace, selector) if selector else []
            now = dt.datetime.now(dt.UTC)
            status = compute_status(pdb, pods, self._controller_scale(namespace, pods), now)
            self._recheck_when_entries_expire(namespace, name, status, now)
            if _same(pdb.get("status") or {}, status):
                return
            try:
                self.pdbs.replace_status(namespace, name, {**pdb, "status": status})
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def _controller_scale(self, namespace: str, pods: list[Pod]) -> int:
        """Summed spec.replicas of the pods' controllers, each counted once (getExpectedScale)."""
        petsets = {name for p in pods if (name := podview.owner_petset(p)) is not None}
        total = 0
        for petset in sorted(petsets):
            try:
                obj = self.custom.get_namespaced_custom_object(
                    shapes.PETSET_GROUP, shapes.PETSET_VERSION, namespace, shapes.PETSET_PLURAL, petset
                )
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            total += int(obj["spec"].get("replicas", 1))
        return total

    def _recheck_when_entries_expire(
        self, namespace: str, name: str, status: dict[str, Any], now: dt.datetime
    ) -> None:
        for stamp in (status.get("disruptedPods") or {}).values():
            if (namespace, name, stamp) in self._rechecks:
                continue
            self._rechecks.add((namespace, name, stamp))
            due = (_parse_time(stamp) - now).total_seconds() + DELETION_TIMEOUT_S + 0.1
            self._timers.later(due, lambda: self._sync(namespace, name))
