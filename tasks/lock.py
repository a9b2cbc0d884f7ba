"""Step 2: one rotation per database at a time, held as a ``coordination.k8s.io`` Lease.

The holder renews the lease every third of its duration (``LockKeeper``); a run that dies stops
renewing, and the next run takes over once the lease has lapsed. A holder whose Prefect flow run has
already ended (crashed, failed, cancelled) is taken over at once. A live holder makes a concurrent
run fail with the holder's name. Create and replace are optimistic (409 → somebody else won), so two
runs can never both believe they hold it.

Whether a lease has lapsed is judged as client-go's leader election does, by the taker's OWN clock:
a lease that nobody changed for its whole duration, as measured by this process's monotonic clock,
has lapsed. The holder's ``renewTime`` is only ever used to be more careful: when it says the lease
is still fresh the lease is treated as live, whatever the clocks. So a holder whose clock is behind
ours does not lose a live lock.

Long steps call ``check_lock`` as they wait, so a run that lost its lock stops within seconds, not
only at its next step.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
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
OBSERVE_EVERY_S: Final = 1.0  # how often a lease that looks lapsed is read again while judging it


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
    """When the lease lapses by its HOLDER's clock (only ever trusted to say "still live")."""
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


def has_lapsed(kube: Kube, lease: client.V1Lease) -> bool:
    """Whether another holder's lease may be taken over (the lease is as last read)."""
    if holder_has_ended(str(lease.spec.holder_identity)):
        return True
    if expires_at(lease) > dt.datetime.now(dt.UTC):
        return False  # fresh by the holder's own clock: live, whatever ours says
    return not _changes_within(kube, lease, float(lease.spec.lease_duration_seconds or 0))


def _changes_within(kube: Kube, lease: client.V1Lease, seconds: float) -> bool:
    """Watch the lease for ``seconds`` of our monotonic clock: does anybody renew or take it?"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(OBSERVE_EVERY_S, max(0.0, deadline - time.monotonic())))
        now = kube.read_lease(lease.metadata.name)
        if now is None or now.metadata.resource_version != lease.metadata.resource_version:
            return True
    return False


def _in_progress(ref: str, lease: client.V1Lease) -> RotationInProgress:
    return RotationInProgress(
        f"{ref} is already being rotated by {lease.spec.holder_identity} "
        f"(Lease {lease.metadata.namespace}/{lease.metadata.name}, renewed "
        f"{lease.spec.renew_time:%Y-%m-%dT%H:%M:%SZ} by its clock); wait for that run to finish"
    )


def refuse_if_locked(kube: Kube, database: str, holder: str) -> client.V1Lease | None:
    """Fail, before anything changes, when another live run holds the database's lock.

    Returns a lease left behind by a run that is gone (judged lapsed), if there is one.
    """
    current = kube.read_lease(lock_name(database))
    if current is None or current.spec.holder_identity == holder:
        return None
    if not has_lapsed(kube, current):
        raise _in_progress(f"{kube.namespace}/{database}", current)
    return current


@task(name="acquire-lock", **RETRYING)
def acquire_lock(target: Target, seconds: int) -> None:
    kube = Kube(target.namespace)
    holder = target.holder
    if kube.create_lease(_lease(target, holder, seconds)) is not None:
        return
    current = kube.read_lease(target.lock_name)
    if current is None:  # released between our create and read: try once more from the top
        if kube.create_lease(_lease(target, holder, seconds)) is not None:
            return
        current = kube.read_lease(target.lock_name)
    if current is not None and current.spec.holder_identity == holder:
        return  # ours already (a retried attempt)
    judged = current is not None and current.metadata.resource_version == target.lapsed_lock_version
    if current is not None and not judged and not has_lapsed(kube, current):
        raise _in_progress(target.ref, current)
    stale = current.spec.holder_identity if current is not None else "nobody"
    version = current.metadata.resource_version if current is not None else None
    if kube.replace_lease(_lease(target, holder, seconds, version)) is None:
        raise RotationInProgress(f"{target.ref}: another run took over the stale lock at the same moment")
    get_run_logger().warning("%s: took over the lock of %s, which is no longer running", target.ref, stale)


@task(name="release-lock", **RETRYING)
def release_lock(target: Target) -> None:
    kube = Kube(target.namespace)
    current = kube.read_lease(target.lock_name)
    if current is not None and current.spec.holder_identity == target.holder:
        kube.delete_lease(target.lock_name, current.metadata.resource_version)


_KEEPERS: dict[tuple[str, str, str], LockKeeper] = {}
_KEEPERS_LOCK = threading.Lock()


def check_lock(target: Target) -> None:
    """Raise if this process's keeper of the target's lock has lost it (a no-op without a keeper)."""
    with _KEEPERS_LOCK:
        keeper = _KEEPERS.get((target.namespace, target.lock_name, target.holder))
    if keeper is not None:
        keeper.check()


class LockKeeper:
    """Renews our Lease in the background; ``check()`` raises once it is lost.

    A run that cannot renew (API unreachable) for a whole lease period, by its own monotonic clock,
    must assume another run took over, and stops.
    """

    def __init__(self, target: Target, seconds: int) -> None:
        self._kube = Kube(target.namespace)
        self._target, self._seconds = target, seconds
        self._key = (target.namespace, target.lock_name, target.holder)
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease-{target.lock_name}", daemon=True)

    def __enter__(self) -> LockKeeper:
        with _KEEPERS_LOCK:
            _KEEPERS[self._key] = self
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._seconds)
        with _KEEPERS_LOCK:
            _KEEPERS.pop(self._key, None)

    def check(self) -> None:
        if self._lost is not None:
            raise RotationInProgress(
                f"{self._target.ref}: this run lost its lock ({self._lost}); it stops here"
            )

    def _run(self) -> None:
        last_renewal = time.monotonic()
        while not self._stop.wait(self._seconds / 3):
            try:
                self._renew()
                last_renewal = time.monotonic()
            except RotationError as exc:
                if time.monotonic() - last_renewal > self._seconds:
                    self._lost = f"not renewed for {self._seconds}s: {exc}"
            if self._lost is not None:
                return

    def _renew(self) -> None:
        for _ in range(3):  # a 409 may be our own re-sent renewal that went through: read again
            current = self._kube.read_lease(self._target.lock_name)
            if current is None or current.spec.holder_identity != self._target.holder:
                self._lost = f"now held by {current.spec.holder_identity if current else 'nobody'}"
                return
            current.spec.renew_time = dt.datetime.now(dt.UTC)
            if self._kube.replace_lease(current) is not None:
                return
        raise RotationInProgress(f"{self._target.ref}: the lock kept changing under its renewal")
