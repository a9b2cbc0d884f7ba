"""Step 2: one rotation per database at a time, held as a ``coordination.k8s.io`` Lease.

The lease expires on its own, so a run that died does not block the database forever; a live
holder makes a concurrent run fail fast with the holder's name. Create and replace are optimistic
(409 → somebody else won), so two runs can never both believe they hold it.
"""

from __future__ import annotations

import datetime as dt

from kubernetes import client
from prefect import get_run_logger, task

from rotation.errors import RotationInProgress
from rotation.kube import Kube
from rotation.plan import Target, lock_name
from tasks._policy import RETRYING


def _lease(target: Target, holder: str, seconds: int, resource_version: str | None = None) -> client.V1Lease:
    now = dt.datetime.now(dt.UTC)
    return client.V1Lease(
        metadata=client.V1ObjectMeta(
            name=target.lock_name,
            namespace=target.namespace,
            resource_version=resource_version,
            labels={
                "app.kubernetes.io/managed-by": "mssql-auth-rotation",
                "app.kubernetes.io/instance": target.database,
            },
        ),
        spec=client.V1LeaseSpec(
            holder_identity=holder, lease_duration_seconds=seconds, acquire_time=now, renew_time=now
        ),
    )


def expires_at(lease: client.V1Lease) -> dt.datetime:
    spec = lease.spec
    renewed = spec.renew_time or spec.acquire_time or dt.datetime.min.replace(tzinfo=dt.UTC)
    return renewed + dt.timedelta(seconds=spec.lease_duration_seconds or 0)


def refuse_if_locked(kube: Kube, database: str, holder: str) -> None:
    """Fail fast, before anything changes, when another live run holds the database's lock."""
    current = kube.read_lease(lock_name(database))
    if current is None or current.spec.holder_identity == holder:
        return
    if expires_at(current) > dt.datetime.now(dt.UTC):
        raise _in_progress(f"{kube.namespace}/{database}", current)


def _in_progress(ref: str, lease: client.V1Lease) -> RotationInProgress:
    return RotationInProgress(
        f"{ref} is already being rotated by {lease.spec.holder_identity} "
        f"(Lease {lease.metadata.namespace}/{lease.metadata.name}, "
        f"held until {expires_at(lease):%Y-%m-%dT%H:%M:%SZ}); wait for that run to finish"
    )


@task(name="acquire-lock", **RETRYING)
def acquire_lock(target: Target, holder: str, seconds: int) -> None:
    kube = Kube(target.namespace)
    if kube.create_lease(_lease(target, holder, seconds)) is not None:
        return
    current = kube.read_lease(target.lock_name)
    if current is None:  # released between our create and read: try once more from the top
        if kube.create_lease(_lease(target, holder, seconds)) is not None:
            return
        current = kube.read_lease(target.lock_name)
    if current is not None and current.spec.holder_identity == holder:
        return  # ours already (a retried attempt)
    if current is not None and expires_at(current) > dt.datetime.now(dt.UTC):
        raise _in_progress(target.ref, current)
    stale = current.spec.holder_identity if current is not None else "nobody"
    version = current.metadata.resource_version if current is not None else None
    if kube.replace_lease(_lease(target, holder, seconds, version)) is None:
        raise RotationInProgress(f"{target.ref}: another run took over the expired lock at the same moment")
    get_run_logger().warning("%s: took over the expired lock of %s", target.ref, stale)


@task(name="release-lock", **RETRYING)
def release_lock(target: Target, holder: str) -> None:
    kube = Kube(target.namespace)
    current = kube.read_lease(target.lock_name)
    if current is not None and current.spec.holder_identity == holder:
        kube.delete_lease(target.lock_name, current.metadata.resource_version)
