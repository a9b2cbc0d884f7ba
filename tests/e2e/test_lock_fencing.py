"""The rotation lock fences (tasks/lock.py), on the real API server: a holder cut off from it stops
before anyone may take its Lease over, a candidate takes over only after watching the Lease unchanged
for a whole lease duration by its own clock (a ``renewTime`` in the year 9999 blocks nothing, a Prefect
run state marked final takes nothing away from a holder that still renews), and the Lease calls have
no hidden retries.

The holders here are ``LockKeeper``s in this process (the flow's own keeper, without the flow around
it), with a 3 s lease: renewed every second, a term of 2 s after each renewal was sent.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import RotationInProgress, TransientError
from rotation.params import TlsVerify
from rotation.plan import Stage, Target, lock_name
from rotation.tls import TlsProfile
from sandbox.cluster import Database
from sandbox.faultproxy import FaultProxy
from tasks.lock import (
    FLOW_RUN_HOLDER,
    LEASE_SECONDS_ENV,
    LockKeeper,
    acquire_lock,
    check_lock,
    lease_kube,
    lease_seconds,
)
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import assert_rotated, is_paused

LEASE_S = 3
BLACKHOLE_S = 120.0  # longer than any test: a request held this long is never answered in time


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEASE_SECONDS_ENV, str(LEASE_S))


def target_of(db: Database, holder: str) -> Target:
    """What the lock needs of a run's target (the database's names and the run's holder name)."""
    return Target(
        namespace=db.namespace,
        database=db.name,
        uid="-",
        auth_secret=f"{db.name}-auth",
        username="sa",
        topology="Standalone",
        replicas=(),
        stage=Stage.IDLE,
        timeout_seconds=60.0,
        tls=TlsProfile(verify=TlsVerify.VERIFY_FULL),
        restart=(),
        holder=holder,
    )


@flow
def a_run_prefect_will_call_crashed() -> None:
    """Never run: only its flow run record, whose state the test sets."""


def crashed_flow_run() -> str:
    """A holder name whose Prefect flow run is marked Crashed (as any API user, or a server that
    lost the run's heartbeat, can mark it) while the test's keeper, its "process", still runs."""
    with get_client(sync_client=True) as prefect:
        run = prefect.create_flow_run(a_run_prefect_will_call_crashed)
        prefect.set_flow_run_state(run.id, Crashed(message="reported crashed"), force=True)
    return f"{FLOW_RUN_HOLDER}{run.id}"


@flow
def take_the_lock(target: Target) -> float:
    """A second run's acquire-lock, as the flow calls it; returns when its request was sent."""
    return acquire_lock(target, lease_seconds())


def lease_of(db: Database) -> client.V1Lease:
    return client.CoordinationV1Api(db.sandbox.api).read_namespaced_lease(lock_name(db.name), db.namespace)


@pytest.fixture
def keeper_of(make_database: DatabaseFactory) -> Iterator[tuple[Database, list[LockKeeper]]]:
    """A database, and the keepers a test starts (stopped at the end whatever happens)."""
    db = make_database(replicas=1)
    keepers: list[LockKeeper] = []
    yield db, keepers
    for keeper in keepers:
        keeper.__exit__(None, None, None)


def hold(db: Database, keepers: list[LockKeeper], holder: str) -> tuple[Target, LockKeeper]:
    target = target_of(db, holder)
    acquired_at = acquire_lock.fn(target, LEASE_S)
    keeper = LockKeeper(target, LEASE_S, acquired_at).__enter__()
    keepers.append(keeper)
    return target, keeper


@proves(
    fault="the lock's holder is cut off from the API server (its Lease requests are never answered) "
    "while Prefect reports its run Crashed, so a second run watches the Lease and takes it over",
    where="Kubernetes API: every Lease request of the holder (fault proxy: held, never answered)",
    outcome="the holder's fence closes 2/3 of a lease after its last renewal was sent, before the "
    "second run even sends its takeover; from then on every write's check_lock refuses",
)
def test_a_holder_cut_off_from_the_api_server_is_fenced_before_anyone_may_take_over(
    keeper_of: tuple[Database, list[LockKeeper]], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, keepers = keeper_of
    lease_path = f"/namespaces/{db.namespace}/leases/{lock_name(db.name)}$"
    first, keeper = hold(db, keepers, crashed_flow_run())  # through the proxy
    db.sandbox.wait_for(lambda: proxy.hits("PUT", lease_path) >= 1, "the holder's first renewal")
    check_lock(first)  # in its term

    proxy.add_fault("*", lease_path, times=10_000, delay=BLACKHOLE_S)
    cut_at = time.monotonic()
    monkeypatch.setenv("KUBECONFIG", str(db.sandbox.kubeconfig))  # the second run is not cut off
    taken_at = take_the_lock(target_of(db, "local/second-run"))

    assert lease_of(db).spec.holder_identity == "local/second-run"
    # The term ended no later than 2/3 of a lease after the cut (its last renewal was sent before it),
    # and before the takeover was even sent (a full lease after the second run began watching).
    assert keeper.valid_until <= cut_at + LEASE_S * 2 / 3
    assert keeper.valid_until < taken_at
    with pytest.raises(RotationInProgress, match=r"lost its lock \(not renewed within 2s"):
        check_lock(first)
    proxy.clear_faults()  # the held requests are dropped when the proxy stops


@proves(
    fault="Prefect reports the lock holder's run Crashed while its process still renews the Lease",
    where="the flow run's state on the Prefect server (set through its API)",
    outcome="a second run watches the Lease, sees it renewed and is refused naming the holder; nothing "
    "changed (a run state is never proof that the holder is gone)",
)
def test_a_holder_that_prefect_calls_crashed_but_still_renews_keeps_its_lock(
    keeper_of: tuple[Database, list[LockKeeper]],
) -> None:
    db, keepers = keeper_of
    original = db.secret_data()["password"]
    name = crashed_flow_run()
    _, keeper = hold(db, keepers, name)

    with pytest.raises(RotationInProgress, match=f"already being rotated by {name}"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    keeper.fence()  # still its lock
    assert lease_of(db).spec.holder_identity == name
    assert db.secret_data()["password"] == original and not is_paused(db)


@proves(
    fault="the Lease's renewTime is in the year 9999 (a holder's broken clock, or a squatter's write)",
    where="the Lease <db>-rotate-auth, written once by someone else and never renewed",
    outcome="the run does not believe it: it watches the Lease unchanged for a whole lease duration by "
    "its own clock, takes it over and rotates",
)
def test_a_lease_renewed_until_the_year_9999_does_not_block_the_database(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    far = dt.datetime(9999, 12, 31, 0, 0, 0, 1, tzinfo=dt.UTC)  # a MicroTime needs its fraction
    client.CoordinationV1Api(db.sandbox.api).create_namespaced_lease(
        db.namespace,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name=lock_name(db.name)),
            spec=client.V1LeaseSpec(
                holder_identity=f"local/{uuid.uuid4()}",
                lease_duration_seconds=LEASE_S,
                acquire_time=far,
                renew_time=far,
            ),
        ),
    )
    started = time.monotonic()

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    assert time.monotonic() - started >= LEASE_S  # it watched the Lease for a whole lease first
    assert_rotated(db, original)
    assert lease_of(db).spec.holder_identity is None  # released: the Lease stays, with no holder


@proves(
    fault="a Lease request's connection is dropped, or its answer never comes",
    where="Kubernetes API: GET of the Lease (fault proxy: dropped; held for 120 s)",
    outcome="the lock's client fails at once on the drop (urllib3 re-sends nothing: one request "
    "reached the proxy) and within its timeout on the held request, so a keeper decides itself",
)
def test_lease_calls_have_no_hidden_retries_and_time_out_within_a_renew_interval(
    make_database: DatabaseFactory, proxy: FaultProxy
) -> None:
    db = make_database(replicas=1)
    lease_path = f"/namespaces/{db.namespace}/leases/{lock_name(db.name)}$"
    kube = lease_kube(db.namespace, LEASE_S)  # through the proxy
    assert kube.read_lease(lock_name(db.name)) is None  # no rotation yet: no Lease

    proxy.add_fault("GET", lease_path, times=1, drop=True)
    with pytest.raises(TransientError, match="could not be reached"):
        kube.read_lease(lock_name(db.name))
    assert proxy.hits("GET", lease_path) == 2  # the one before, and the dropped one: never re-sent

    proxy.add_fault("GET", lease_path, times=1, delay=BLACKHOLE_S)
    with pytest.raises(TransientError, match="could not be reached"):
        kube.read_lease(lock_name(db.name))  # a 1 s timeout: it would otherwise get the 404 in 120 s
    assert proxy.hits("GET", lease_path) == 3
