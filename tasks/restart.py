"""Step 4e, the rolling restart, one pod at a time, following the primary:

- ``get-pod`` re-reads the roles right before each eviction (the coordinator may have moved the
  primary), waits for an election under way to settle, and picks the next pod: secondaries first,
  the current primary last;
- ``evict-pod`` confirms the run's pause still stands with no other pause beside it and no KubeDB ops
  request started, then evicts exactly that pod (its UID is a precondition). A PodDisruptionBudget
  that refuses is asked again until the step's timeout and never overridden; only throttling
  without a budget (a 429 with no DisruptionBudget cause) falls back to deleting the pod after half
  the timeout, and only when no PodDisruptionBudget of the namespace selects the pod (read at that
  moment: a budget whose refusal did not name it still protects the pod);
- ``check-pod-running`` waits (watch) until the new pod is Ready and accepts the new password.

Each is bounded by the request's timeout.
"""

from __future__ import annotations

import time
from typing import Final

from prefect import get_run_logger, task

from rotation.cancellation import raise_if_stopping
from rotation.credentials import read_credentials
from rotation.errors import StepTimeout, TransientError
from rotation.kube import Eviction, EvictionRefused, Kube
from rotation.plan import (
    PodView,
    Replica,
    Target,
    next_to_restart,
    replica_of,
    roles_settled,
    usable_replicas,
)
from rotation.sqlserver import accepts
from tasks._guards import ROLL_FORWARD, confirm_held
from tasks._policy import RETRYING
from tasks.lock import check_lock

EVICTION_RETRY_S: Final = 1.0  # how often a refused eviction (429) is asked again
THROTTLE_PATIENCE: Final = 0.5  # share of the timeout spent on throttled evictions before deleting


@task(name="get-pod", **RETRYING)
def get_next_pod(target: Target, pending: list[str]) -> Replica:
    """The next pod to restart, with its current UID, address and role."""
    kube = Kube(target.namespace)
    names = [r.pod for r in target.replicas]

    def settled(pods: list[PodView]) -> bool:
        replicas = usable_replicas(pods, target.database, names)
        return replicas is not None and roles_settled(replicas)

    try:
        pods = kube.wait_for_database_pods(
            target.database, settled, time.monotonic() + target.timeout_seconds
        )
    except TimeoutError:
        raise StepTimeout(
            f"{target.ref}: its pods did not all run with exactly one primary within "
            f"{target.timeout_seconds:.0f}s, so no further pod is restarted. The new password is committed "
            "and works on every replica: once the availability group is healthy, run the rotation again "
            "to finish the restarts"
        ) from None
    replicas = usable_replicas(pods, target.database, names)
    chosen = next_to_restart(replicas or (), pending)
    if chosen is None:
        raise ValueError(f"none of {pending} is a replica of {target.ref}")
    return chosen


@task(name="evict-pod", task_run_name="evict-pod {replica.pod}", **RETRYING)
def evict_pod(target: Target, replica: Replica) -> None:
    kube = Kube(target.namespace)
    confirm_held(kube, target, then=ROLL_FORWARD)
    deleted = _evict_or_delete(kube, target, replica)
    db = kube.get_database(target.database)
    if deleted:
        message = f"Deleted pod {replica.pod}: its evictions kept being throttled (no disruption budget)"
        get_run_logger().warning(message)
        kube.record_event(db, "DeletePod", message, warning=True)
    else:
        kube.record_event(db, "EvictPod", f"Evicted pod {replica.pod}")


def _evict_or_delete(kube: Kube, target: Target, replica: Replica) -> bool:
    """Evict the pod, asking again while refused; True if it had to be deleted instead."""
    deadline = time.monotonic() + target.timeout_seconds
    give_up_throttled = time.monotonic() + target.timeout_seconds * THROTTLE_PATIENCE
    refusal: EvictionRefused | None = None
    while _still_there(kube, replica):
        check_lock(target)
        outcome = kube.evict_pod(replica.pod, replica.uid)
        if outcome in (Eviction.EVICTED, Eviction.GONE):
            return False
        if isinstance(outcome, EvictionRefused) and outcome.budget:
            refusal = outcome  # from now on this pod is never deleted, however long it takes
        if refusal is None and time.monotonic() >= give_up_throttled:
            covering = kube.budgets_selecting_pod(replica.pod)
            if not covering:
                kube.delete_pod(replica.pod, replica.uid)
                return True
            # A budget selects it although no refusal named one: never delete, whatever throttled it.
            said = outcome.message if isinstance(outcome, EvictionRefused) else "evictions kept being refused"
            refusal = EvictionRefused(", ".join(covering), f"{said}; the budget selects the pod")
        if refusal is not None and time.monotonic() >= deadline:
            raise _refused_by_budget(target, replica, refusal)
        if time.monotonic() >= deadline:
            raise TransientError(f"the eviction of pod {target.namespace}/{replica.pod} did not go through")
        time.sleep(EVICTION_RETRY_S)  # refused for now (or a conflict): look and ask again shortly
    return False


def _still_there(kube: Kube, replica: Replica) -> bool:
    """The very pod we mean to evict exists and is not on its way down already."""
    pod = kube.read_pod(replica.pod)
    return pod is not None and pod.uid == replica.uid and not pod.terminating


def _refused_by_budget(target: Target, replica: Replica, refusal: EvictionRefused) -> StepTimeout:
    return StepTimeout(
        f"eviction of pod {target.namespace}/{replica.pod} was refused for {target.timeout_seconds:.0f}s by "
        f"PodDisruptionBudget {target.namespace}/{refusal.budget} ({refusal.message}). No pod was deleted: "
        "the budget protects it. The new password is committed and works on every replica: once the "
        "budget allows a disruption (enough pods healthy, or the budget relaxed), run the rotation again "
        "to finish the restarts"
    )


@task(name="check-pod-running", task_run_name="check-pod-running {replica.pod}", **RETRYING)
def check_pod_running(target: Target, replica: Replica) -> Replica:
    """Wait (watch) until a new pod of that name is Ready and accepts the new password."""
    kube = Kube(target.namespace)
    deadline = time.monotonic() + target.timeout_seconds

    def replaced_and_ready(pod: PodView | None) -> bool:
        return (
            pod is not None and pod.uid != replica.uid and not pod.terminating and bool(pod.ip) and pod.ready
        )

    def still_ours() -> None:  # while waiting: the lock, and whether this process is being stopped
        check_lock(target)
        raise_if_stopping(target.ref, f"{replica.pod} was back")

    try:
        pod = kube.wait_for_pod(replica.pod, replaced_and_ready, deadline, guard=still_ours)
    except TimeoutError:
        raise StepTimeout(
            f"pod {target.namespace}/{replica.pod} was not back and Ready "
            f"within {target.timeout_seconds:.0f}s. "
            "The new password is committed in the auth secret and works on every replica: once the pod "
            "is healthy, run the rotation again to finish the restarts (it does so even if the database "
            "is not Ready)"
        ) from None
    creds = read_credentials(kube, _auth_secret_in_use(kube, target), purpose="the database's auth secret")
    restarted = replica_of(pod, len(target.replicas))
    if not accepts(target.endpoint_of(restarted), creds.username, creds.current):
        raise TransientError(f"restarted pod {replica.pod} does not accept the new password yet")
    kube.record_event(
        kube.get_database(target.database), "CheckPodRunning", f"Pod {replica.pod} is running and Ready again"
    )
    get_run_logger().info("%s is back, Ready and accepts the new password", replica.pod)
    return restarted


def _auth_secret_in_use(kube: Kube, target: Target) -> str:
    db = kube.get_database(target.database)
    return str((db["spec"].get("authSecret") or {}).get("name") or target.auth_secret)
