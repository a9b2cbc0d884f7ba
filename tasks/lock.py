"""Step 2: one rotation per database at a time, held as a ``coordination.k8s.io`` Lease.

The holder renews the lease every third of its duration (``LockKeeper``); a run that dies stops
renewing, so its lock lapses after ``lease_seconds()`` and the next run takes over. A holder whose
Prefect flow run has already ended (crashed, failed, cancelled) is taken over at once. A live holder
makes a concurrent run fail fast with the holder's name. Create and replace are optimistic (409 →
somebody else won), so two runs can never both believe they hold it.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from typing import Final

from kubernetes import client
from prefect import get_run_logger, task
from prefect.client.orchestration import get_client

from rotation.errors import RotationError, RotationInProgress
from rotation.kube import Kube
from rotation.plan import Target, lock_name
from tasks._policy import RETRYING

LEASE_SECONDS_ENV: Final = "MSSQL_AUTH_ROTATION_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS: Final = 30  # how long a dead run can block the next one
FLOW_RUN_HOLDER: Final = "prefect-flow-run/"


def lease_seconds() -> int:
    return max(3, int(os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS)))


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


def holder_has_ended(holder: str) -> bool:
    """Whether the holder is a Prefect flow run that is no longer running (best effort)."""
    if not holder.startswith(FLOW_RUN_HOLDER):
        return False
    try:
        run_id = uuid.UUID(holder.removeprefix(FLOW_RUN_HOLDER))
        with get_client(sync_client=True) as prefect:
            state = prefect.read_flow_run(run_id).state
    except Exception:  # unknown to this Prefect API, or the API is unreachable: trust the lease
        return False
    return state is not None and state.is_final()


def is_live(lease: client.V1Lease, holder: str) -> bool:
    """Held by someone else who may still be working."""
    other = lease.spec.holder_identity
    return other != holder and expires_at(lease) > dt.datetime.now(dt.UTC) and not holder_has_ended(other)


def _in_progress(ref: str, lease: client.V1Lease) -> RotationInProgress:
    return RotationInProgress(
        f"{ref} is already being rotated by {lease.spec.holder_identity} "
        f"(Lease {lease.metadata.namespace}/{lease.metadata.name}, "
        f"renewed until {expires_at(lease):%Y-%m-%dT%H:%M:%SZ}); wait for that run to finish"
    )


def refuse_if_locked(kube: Kube, database: str, holder: str) -> str | None:
    """Fail fast, before anything changes, when another live run holds the database's lock.

    Returns the holder of a lock left behind by a run that is gone, if there is one.
    """
    current = kube.read_lease(lock_name(database))
    if current is None or current.spec.holder_identity == holder:
        return None
    if is_live(current, holder):
        raise _in_progress(f"{kube.namespace}/{database}", current)
    return str(current.spec.holder_identity)


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
    if current is not None and is_live(current, holder):
        raise _in_progress(target.ref, current)
    stale = current.spec.holder_identity if current is not None else "nobody"
    version = current.metadata.resource_version if current is not None else None
    if kube.replace_lease(_lease(target, holder, seconds, version)) is None:
        raise RotationInProgress(f"{target.ref}: another run took over the stale lock at the same moment")
    get_run_logger().warning("%s: took over the lock of %s, which is no longer running", target.ref, stale)


@task(name="release-lock", **RETRYING)
def release_lock(target: Target, holder: str) -> None:
    kube = Kube(target.namespace)
    current = kube.read_lease(target.lock_name)
    if current is not None and current.spec.holder_identity == holder:
        kube.delete_lease(target.lock_name, current.metadata.resource_version)


class LockKeeper:
    """Renews our Lease in the background; ``check()`` raises once it is lost.

    A run that cannot renew (API unreachable) for a whole lease period must assume another run took
    over, and stops before its next step.
    """

    def __init__(self, target: Target, holder: str, seconds: int) -> None:
        self._kube = Kube(target.namespace)
        self._target, self._holder, self._seconds = target, holder, seconds
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease-{target.lock_name}", daemon=True)

    def __enter__(self) -> LockKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._seconds)

    def check(self) -> None:
        if self._lost is not None:
            raise RotationInProgress(
                f"{self._target.ref}: this run lost its lock ({self._lost}); it stops here"
            )

    def _run(self) -> None:
        last_renewal = dt.datetime.now(dt.UTC)
        while not self._stop.wait(self._seconds / 3):
            try:
                self._renew()
                last_renewal = dt.datetime.now(dt.UTC)
            except RotationError as exc:
                if dt.datetime.now(dt.UTC) - last_renewal > dt.timedelta(seconds=self._seconds):
                    self._lost = f"not renewed for {self._seconds}s: {exc}"
            if self._lost is not None:
                return

    def _renew(self) -> None:
        current = self._kube.read_lease(self._target.lock_name)
        if current is None or current.spec.holder_identity != self._holder:
            self._lost = f"now held by {current.spec.holder_identity if current else 'nobody'}"
            return
        current.spec.renew_time = dt.datetime.now(dt.UTC)
        if self._kube.replace_lease(current) is None:
            self._lost = "changed by another writer"
