"""Step 4e, the rolling restart: one pod at a time, evicted, then awaited until it is back, Ready,
and accepts the new password. Bounded by the request's timeout per step.
"""

from __future__ import annotations

import time
from typing import Final

from kubernetes import client
from prefect import get_run_logger, task

from rotation.credentials import read_credentials
from rotation.errors import StepTimeout, TransientError
from rotation.kube import Kube, pod_is_ready
from rotation.plan import Endpoint, Replica, Target
from rotation.sqlserver import accepts
from tasks._policy import RETRYING

EVICTION_RETRY_S: Final = 1.0  # how often a refused eviction (429) is asked again
EVICTION_PATIENCE: Final = 0.5  # share of the timeout spent on refused evictions before deleting


@task(name="evict-pod", **RETRYING)
def evict_pod(target: Target, replica: Replica) -> None:
    """Evict through the eviction API; delete the pod if evictions keep being refused."""
    kube = Kube(target.namespace)
    pod = kube.read_pod(replica.pod)
    if pod is None or pod.metadata.uid != replica.uid or pod.metadata.deletion_timestamp:
        return  # already restarted or on its way down
    give_up = time.monotonic() + target.timeout_seconds * EVICTION_PATIENCE
    while not kube.evict_pod(replica.pod):
        if time.monotonic() >= give_up:
            get_run_logger().warning("eviction of %s keeps being refused; deleting it", replica.pod)
            kube.delete_pod(replica.pod, replica.uid)
            break
        time.sleep(EVICTION_RETRY_S)  # a disruption budget refuses now; ask again shortly
    kube.record_event(kube.get_database(target.database), "EvictPod", f"Evicted pod {replica.pod}")


@task(name="check-pod-ready", **RETRYING)
def wait_pod_ready(target: Target, replica: Replica) -> Replica:
    """Wait (watch) until a new pod of that name is Ready and accepts the new password."""
    kube = Kube(target.namespace)
    deadline = time.monotonic() + target.timeout_seconds

    def replaced_and_ready(pod: client.V1Pod | None) -> bool:
        return (
            pod is not None
            and pod.metadata.uid != replica.uid
            and not pod.metadata.deletion_timestamp
            and bool(pod.status and pod.status.pod_ip)
            and pod_is_ready(pod)
        )

    try:
        pod = kube.wait_for_pod(replica.pod, replaced_and_ready, deadline)
    except TimeoutError:
        raise StepTimeout(
            f"pod {target.namespace}/{replica.pod} was not back and Ready "
            f"within {target.timeout_seconds:.0f}s. "
            "The new password is committed in the auth secret and works on every replica: once the pod "
            "is healthy, run the rotation again to finish the restarts (it does so even if the database "
            "is not Ready)"
        ) from None
    creds = read_credentials(kube, _auth_secret_in_use(kube, target), purpose="the database's auth secret")
    restarted = Replica(pod=replica.pod, host=pod.status.pod_ip, uid=pod.metadata.uid, role=replica.role)
    if not accepts(Endpoint(restarted.pod, restarted.host, target.sql_port), creds.username, creds.current):
        raise TransientError(f"restarted pod {replica.pod} does not accept the new password yet")
    kube.record_event(
        kube.get_database(target.database), "CheckPodReady", f"Pod {replica.pod} is Ready again"
    )
    get_run_logger().info("%s is back, Ready and accepts the new password", replica.pod)
    return restarted


def _auth_secret_in_use(kube: Kube, target: Target) -> str:
    db = kube.get_database(target.database)
    return str((db["spec"].get("authSecret") or {}).get("name") or target.auth_secret)
