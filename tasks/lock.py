"""Step 2: one rotation per database at a time, held as a ``coordination.k8s.io`` Lease that fences.

The holder (``LockKeeper``) renews the Lease every third of its duration. It records, on its own
monotonic clock, when each renewal that SUCCEEDED was sent, and holds the lock only until that moment
plus the renew deadline, two thirds of the lease (client-go's proportions). ``fence()`` computes this
when it is called, not from a background thread's opinion, and every SQL write and Secret write calls
it first (through ``check_lock``). Lease calls go through a client without urllib3 retries and time
out within one renew interval, so a holder cut off from the API server stops before its deadline.

A candidate takes over another holder's Lease only after it has itself seen the record (its
resourceVersion) unchanged for a full lease duration by its own monotonic clock (client-go's rule):
the longer of the record's duration and ours, capped at ``MAX_LEASE_S`` so that a record claiming a
huge duration cannot block the database for ever. Since the candidate's watch begins after the
holder's last renewal was applied, and the holder stops at that renewal's sending plus two thirds of
the lease, the holder is fenced a third of a lease before anyone may take over. The record's own
``renewTime`` is only ever trusted to refuse at once, and only when it lies within one lease
duration of our clock (a ``renewTime`` in the year 9999 is watched like any other). A Prefect run
state is never proof that the holder is gone: anyone with API access can set one, and the server
can mark a run final while its process still runs. It only makes a candidate watch the Lease instead
of refusing at once. A Lease with no holder (released) is free at once.

The Lease itself comes with the database's grant (``python -m rotation rbac``), so the rotation's
identity needs no namespace-wide ``create`` on Leases; releasing clears the holder instead of
deleting the object. Create and replace are optimistic (409: somebody else won), so two runs can
never both believe they hold it.
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

from rotation.errors import PermanentError, RotationError, RotationInProgress, TransientError
from rotation.kube import Kube
from rotation.plan import Target, lock_name
from tasks._policy import RETRYING

LEASE_SECONDS_ENV: Final = "MSSQL_AUTH_ROTATION_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS: Final = 30  # how long a dead run can block the next one
MIN_LEASE_S: Final = 3
MAX_LEASE_S: Final = 300  # the longest a candidate watches a Lease before taking it over
FLOW_RUN_HOLDER: Final = "prefect-flow-run/"
OBSERVE_EVERY_S: Final = 1.0  # how often a watched lease is read again
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "mssql-auth-rotation"}


def lease_seconds() -> int:
    return max(MIN_LEASE_S, int(os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS)))


def renew_interval(lease_s: float) -> float:
    """How often the holder renews: a third of the lease."""
    return lease_s / 3


def renew_deadline(lease_s: float) -> float:
    """How long after sending its last successful renewal the holder may still write."""
    return lease_s * 2 / 3


def call_timeout(lease_s: float) -> float:
    """The whole-request timeout of the holder's Lease calls: half a renew interval, so that a
    failed renewal leaves time for another before the deadline; at least 1 s (never above one
    renew interval, whose minimum is 1 s)."""
    interval = renew_interval(lease_s)
    return min(interval, max(interval / 2, 1.0))


def observe_seconds(lease: client.V1Lease, ours: float) -> float:
    """How long a candidate must see the record unchanged: the longer of its duration and ours,
    capped at ``MAX_LEASE_S``."""
    theirs = (lease.spec.lease_duration_seconds if lease.spec is not None else None) or 0
    return float(min(MAX_LEASE_S, max(theirs, ours)))


def holder_of(lease: client.V1Lease | None) -> str | None:
    """The Lease's holder, or None when nobody holds it (absent, released, or no spec)."""
    if lease is None or lease.spec is None or not lease.spec.holder_identity:
        return None
    return str(lease.spec.holder_identity)


def renewed_recently(lease: client.V1Lease, now: dt.datetime, ours: float) -> bool:
    """Whether the record's own ``renewTime`` says "live": renewed within one lease duration of
    ``now``, before or after (a holder's clock may run ahead). Only ever used to refuse or to
    report, never to take over; a time further in the future is not believed."""
    spec = lease.spec
    renewed: dt.datetime | None = (spec.renew_time or spec.acquire_time) if spec is not None else None
    if renewed is None:
        return False
    window = dt.timedelta(seconds=observe_seconds(lease, ours))
    return now - window < renewed <= now + window


def holder_has_ended(holder: str) -> bool:
    """Whether the holder is a Prefect flow run that Prefect reports as no longer running.

    Best effort, and never proof: it only makes a candidate watch the Lease rather than refuse at
    once (and the fleet report the lock as left behind)."""
    if not holder.startswith(FLOW_RUN_HOLDER):
        return False
    try:
        run_id = uuid.UUID(holder.removeprefix(FLOW_RUN_HOLDER))
        with get_client(sync_client=True) as prefect:
            state = prefect.read_flow_run(run_id).state
    except Exception:  # unknown to this Prefect API, or the API is unreachable: trust the lease
        return False
    return state is not None and state.is_final()


def lease_kube(namespace: str, lease_s: float) -> Kube:
    """A Kube whose Lease calls time out within one renew interval of a lease of ``lease_s``."""
    return Kube(namespace, lease_timeout=call_timeout(lease_s))


def has_lapsed(kube: Kube, lease: client.V1Lease, ours: float, *, patient: bool = False) -> bool:
    """Whether another holder's lease (as last read) may be taken over.

    A fresh-looking lease is refused at once, unless ``patient``: recovery watches it like any other,
    because the run that holds it may have just died with its process (a fleet run SIGKILLed: its
    rotations' Leases look fresh for up to a lease, and Prefect shows them Running for ever).

    Raises ``TransientError`` when the lease was released or deleted while it was watched: the
    caller starts again from a fresh read (a retried task).
    """
    holder = holder_of(lease)
    if holder is None:
        return True
    fresh = renewed_recently(lease, dt.datetime.now(dt.UTC), ours) and not holder_has_ended(holder)
    if fresh and not patient:
        return False  # fresh by the holder's own clock, and nothing says otherwise: refuse at once
    return not _changes_within(kube, lease, observe_seconds(lease, ours))


def _changes_within(kube: Kube, lease: client.V1Lease, seconds: float) -> bool:
    """Watch the lease for ``seconds`` of our monotonic clock: does its holder renew it, or does
    anybody take it?"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(OBSERVE_EVERY_S, max(0.0, deadline - time.monotonic())))
        now = kube.read_lease(lease.metadata.name)
        if now is not None and now.metadata.resource_version == lease.metadata.resource_version:
            continue
        if holder_of(now) is None:
            raise TransientError(
                f"Lease {kube.namespace}/{lease.metadata.name} was released while this run watched it"
            )
        return True
    return False


def _in_progress(ref: str, lease: client.V1Lease) -> RotationInProgress:
    renewed = lease.spec.renew_time
    when = f"{renewed:%Y-%m-%dT%H:%M:%SZ}" if renewed is not None else "at an unknown time"
    return RotationInProgress(
        f"{ref} is already being rotated by {lease.spec.holder_identity} "
        f"(Lease {lease.metadata.namespace}/{lease.metadata.name}, renewed {when} by its clock); "
        "wait for that run to finish"
    )


def refuse_if_locked(
    kube: Kube, database: str, holder: str, *, patient: bool = False
) -> client.V1Lease | None:
    """Fail, before anything changes, when another live run holds the database's lock (``patient``:
    after watching it renewed, see ``has_lapsed``).

    Returns a lease left behind by a run that is gone (watched, and judged lapsed), if there is one.
    """
    current = kube.read_lease(lock_name(database))
    if current is None or holder_of(current) in (None, holder):
        return None
    if not has_lapsed(kube, current, lease_seconds(), patient=patient):
        raise _in_progress(f"{kube.namespace}/{database}", current)
    return current


def _micro_now() -> dt.datetime:
    """Now, as a Lease's MicroTime: the client writes no fraction for 0 µs, which the API server
    refuses (400), so such an instant is written 1 µs later."""
    now = dt.datetime.now(dt.UTC)
    return now if now.microsecond else now.replace(microsecond=1)


def _claim(lease: client.V1Lease, holder: str, seconds: int) -> client.V1Lease:
    """The lease, as read, now held by ``holder`` (metadata kept: labels, kubectl's annotation)."""
    now = _micro_now()
    spec = lease.spec or client.V1LeaseSpec()
    if spec.holder_identity != holder:
        spec.acquire_time = now
        if spec.holder_identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
    spec.holder_identity, spec.lease_duration_seconds, spec.renew_time = holder, seconds, now
    lease.spec = spec
    return lease


def _new_lease(target: Target) -> client.V1Lease:
    labels = {**MANAGED_BY, "app.kubernetes.io/instance": target.database}
    meta = client.V1ObjectMeta(name=target.lock_name, namespace=target.namespace, labels=labels)
    return client.V1Lease(metadata=meta)


def _not_granted(target: Target) -> PermanentError:
    return PermanentError(
        f"Lease {target.namespace}/{target.lock_name} does not exist and this identity may not create "
        "it (403): it comes with the database's grant. Apply it with `python -m rotation rbac "
        f"--namespace {target.namespace} --database {target.database} --replicas N | kubectl apply -f -`"
    )


@task(name="acquire-lock", **RETRYING)
def acquire_lock(target: Target, seconds: int) -> float:
    """Take the database's lock; returns when (``time.monotonic()``) the request that took it was
    sent: the holder's term runs from then."""
    kube = lease_kube(target.namespace, seconds)
    current = kube.read_lease(target.lock_name)
    if current is None:
        sent = time.monotonic()
        claim = _claim(_new_lease(target), target.holder, seconds)
        if kube.create_lease(claim, forbidden=lambda: _not_granted(target)) is not None:
            return sent
        current = kube.read_lease(target.lock_name)
        if current is None:
            raise TransientError(f"{target.ref}: the lock was created and removed again at once")
    held_by = holder_of(current)
    judged = current.metadata.resource_version == target.lapsed_lock_version
    if held_by not in (None, target.holder) and not judged and not has_lapsed(kube, current, seconds):
        raise _in_progress(target.ref, current)
    sent = time.monotonic()  # ours already (a retried attempt), released, or lapsed: (re)claim it
    if kube.replace_lease(_claim(current, target.holder, seconds)) is None:
        raise RotationInProgress(f"{target.ref}: another run took the lock at the same moment")
    if held_by not in (None, target.holder):
        get_run_logger().warning(
            "%s: took over the lock of %s, which stopped renewing it", target.ref, held_by
        )
    return sent


@task(name="release-lock", **RETRYING)
def release_lock(target: Target) -> None:
    """Clear the holder (the Lease stays: the identity may not create it again)."""
    release_if_held_by(lease_kube(target.namespace, lease_seconds()), target.lock_name, target.holder)


def release_if_held_by(kube: Kube, name: str, holder: str) -> bool:
    """Clear the Lease's holder if it is ``holder``; whether it was."""
    current = kube.read_lease(name)
    if current is None or holder_of(current) != holder:
        return False
    current.spec.holder_identity = None
    current.spec.renew_time = _micro_now()
    if kube.replace_lease(current) is None:
        raise TransientError(
            f"Lease {kube.namespace}/{name} changed while it was being released; reading it again"
        )
    return True


_KEEPERS: dict[tuple[str, str, str], LockKeeper] = {}
_KEEPERS_LOCK = threading.Lock()


def held_here(namespace: str, lease: str, holder: str) -> bool:
    """Whether a keeper in this process still holds that lock: its run is alive, here."""
    with _KEEPERS_LOCK:
        return (namespace, lease, holder) in _KEEPERS


def check_lock(target: Target) -> None:
    """Raise unless this process's keeper of the target's lock is within its term (a no-op
    without a keeper). Called right before every SQL write and every Secret write."""
    with _KEEPERS_LOCK:
        keeper = _KEEPERS.get((target.namespace, target.lock_name, target.holder))
    if keeper is not None:
        keeper.fence()


class Term:
    """A holder's term, on its own monotonic clock: it ends ``renew_deadline`` after the last
    successful renewal was SENT (the server applied it later, and a candidate's watch of that
    renewal began later still, so the candidate's clock is behind this one)."""

    def __init__(self, lease_s: float, acquired_at: float) -> None:
        self.lease_s = lease_s
        self.renewed_at = acquired_at

    def renewed(self, sent: float) -> None:
        self.renewed_at = max(self.renewed_at, sent)  # an older request's late success moves nothing

    @property
    def ends_at(self) -> float:
        return self.renewed_at + renew_deadline(self.lease_s)

    def over(self, now: float) -> bool:
        return now >= self.ends_at


class LockKeeper:
    """Renews our Lease in the background; ``fence()`` raises once the lock may be lost.

    The term ends ``renew_deadline`` after the last successful renewal was sent (at first, the
    acquiring request: ``acquired_at``), by this process's monotonic clock, whatever the renewal
    thread is doing; after that the keeper never renews again. A renewal that fails is tried again
    after a quarter of a renew interval, each within ``call_timeout``.
    """

    def __init__(self, target: Target, seconds: int, acquired_at: float) -> None:
        self._kube = lease_kube(target.namespace, seconds)
        self._target, self._seconds = target, seconds
        self._key = (target.namespace, target.lock_name, target.holder)
        self._mutex = threading.Lock()
        self._term = Term(seconds, acquired_at)
        self._lease: client.V1Lease | None = None  # the record as our last renewal left it
        self._lost: str | None = None
        self._stop = threading.Event()
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

    @property
    def valid_until(self) -> float:
        """The end of the term, on ``time.monotonic()``'s clock."""
        with self._mutex:
            return self._term.ends_at

    def fence(self) -> None:
        """Raise ``RotationInProgress`` unless the lock is still ours for certain, now."""
        with self._mutex:
            if self._lost is None and self._term.over(time.monotonic()):
                self._lost = (
                    f"not renewed within {renew_deadline(self._seconds):.0f}s, so another run may "
                    f"take it over after {self._seconds}s"
                )
            lost = self._lost
        if lost is not None:
            raise RotationInProgress(f"{self._target.ref}: this run lost its lock ({lost}); it stops here")

    def _lose(self, why: str) -> None:
        with self._mutex:
            self._lost = self._lost or why

    def _run(self) -> None:
        interval = renew_interval(self._seconds)
        with self._mutex:
            pause = max(0.0, self._term.renewed_at + interval - time.monotonic())
        while not self._stop.wait(pause):
            try:
                self.fence()  # past the term: never renew again
            except RotationInProgress:
                return
            try:
                sent = self._renew()
            except RotationInProgress as exc:
                self._lose(str(exc))
                return
            except RotationError:
                pause = interval / 4  # try again soon; fence() ends the term on its own
                continue
            with self._mutex:
                self._term.renewed(sent)
            pause = max(0.0, sent + interval - time.monotonic())

    def _renew(self) -> float:
        """One renewal; returns when the request that succeeded was sent."""
        for _ in range(2):  # a 409 may be our own renewal that timed out but went through: read again
            if self._lease is None:
                current = self._kube.read_lease(self._target.lock_name)
                if holder_of(current) != self._target.holder:
                    raise RotationInProgress(f"now held by {holder_of(current) or 'nobody'}")
                self._lease = current
            assert self._lease is not None
            sent = time.monotonic()
            renewed = self._kube.replace_lease(_claim(self._lease, self._target.holder, self._seconds))
            self._lease = renewed
            if renewed is not None:
                return sent
        raise TransientError(f"{self._target.ref}: the lock kept changing under its renewal")
