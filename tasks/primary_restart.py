"""Before the restart that applications feel: the primary's (or a standalone database's only pod).

Restarting a secondary disturbs no client of the primary Service; restarting the primary ends every
application connection, and each application logs in again at once. Two waits make that moment cost
as little as the platform allows (docs/performance.md, "What applications see", has the numbers):

- ``wait-for-secret-propagation``: a pod that mounts the auth secret as a volume sees the new
  password only at its kubelet's next sync (about a minute by default). If such a pod exists in the
  namespace, the primary waits until ``MSSQL_AUTH_ROTATION_SECRET_PROPAGATION_SECONDS`` (default 60)
  after the commit (the secret's ``kubedb.com/auth-active-from``), so those applications log in with
  the new password instead of failing until their volume catches up. No such pod: no wait. Pods that
  read the password at start (env) are restarted after the rotation (tasks/workloads.py).
- ``wait-for-synchronized-secondaries``: an automatic failover goes only to a synchronized secondary.
  A secondary that was just restarted replays the log it missed first; restarting the primary then
  leaves the group without a primary until the old one is back. Each secondary is asked (over TLS, as
  the new password) for its replica's synchronization health until every one is HEALTHY.

Both are bounded by the request's timeout; neither ever restarts anything.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Final

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.cancellation import raise_if_stopping
from rotation.credentials import read_credentials
from rotation.durations import remaining_propagation
from rotation.errors import StepTimeout
from rotation.kube import Kube
from rotation.plan import Replica, Target
from rotation.sqlserver import synchronized
from tasks._policy import RETRYING
from tasks.lock import check_lock

PROPAGATION_ENV: Final = "MSSQL_AUTH_ROTATION_SECRET_PROPAGATION_SECONDS"
# The kubelet's default syncFrequency (1m): a mounted Secret is refreshed at the pod's next sync.
DEFAULT_PROPAGATION_S: Final = 60.0
SYNC_POLL_S: Final = 0.25


def propagation_seconds() -> float:
    return max(0.0, float(os.environ.get(PROPAGATION_ENV, DEFAULT_PROPAGATION_S)))


@task(name="wait-for-secret-propagation", **RETRYING)
def wait_for_secret_propagation(target: Target, secret_in_use: str) -> None:
    kube = Kube(target.namespace)
    mounting = kube.pods_mounting_secret(secret_in_use, besides=target.database)
    if not mounting:
        return
    creds = read_credentials(kube, secret_in_use, purpose="the database's auth secret")
    wait = remaining_propagation(
        creds.annotations.get(c.ANNOTATION_ACTIVE_FROM), propagation_seconds(), dt.datetime.now(dt.UTC)
    )
    shown = ", ".join(mounting[:5]) + (f" and {len(mounting) - 5} more" if len(mounting) > 5 else "")
    if wait > 0:
        get_run_logger().info(
            "%s: %d pod(s) mount Secret %s (%s): waiting %.0f s more before the primary restarts, so they "
            "have the new password when they reconnect (%s)",
            target.ref,
            len(mounting),
            secret_in_use,
            shown,
            wait,
            PROPAGATION_ENV,
        )
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        check_lock(target)
        raise_if_stopping(target.ref, "the secret had reached the pods that mount it")
        time.sleep(min(1.0, left))


@task(name="wait-for-synchronized-secondaries", **RETRYING)
def wait_for_synchronized_secondaries(target: Target, primary: Replica, secret_in_use: str) -> None:
    kube = Kube(target.namespace)
    creds = read_credentials(kube, secret_in_use, purpose="the database's auth secret")
    secondaries = [r for r in target.replicas if r.pod != primary.pod]
    deadline = time.monotonic() + target.timeout_seconds
    while True:
        lagging = [
            r.pod
            for r in _current(kube, target, secondaries)
            if not synchronized(target.endpoint_of(r), creds.username, creds.current)
        ]
        if not lagging:
            return
        if time.monotonic() >= deadline:
            raise StepTimeout(
                f"{target.ref}: secondaries {', '.join(lagging)} were not synchronized with the primary "
                f"within {target.timeout_seconds:.0f}s, so the primary {primary.pod} was not restarted (no "
                "replica could take over). The new password is committed and works on every replica: once "
                "the availability group is healthy, run the rotation again to finish the restarts"
            )
        check_lock(target)
        raise_if_stopping(target.ref, "the secondaries were synchronized")
        time.sleep(SYNC_POLL_S)


def _current(kube: Kube, target: Target, replicas: list[Replica]) -> list[Replica]:
    """The secondaries at their current addresses (each was restarted: a new pod, a new IP)."""
    pods = {p.name: p for p in kube.list_database_pods(target.database)}
    return [
        r.model_copy(update={"host": pods[r.pod].ip, "port": pods[r.pod].port})
        if r.pod in pods and pods[r.pod].ip
        else r
        for r in replicas
    ]
