"""The rotate-mssql-fleet flow end to end: Prefect's test server + the sandbox, real clients only.

Mixed fleets (due, not due, paused by someone else, failing), the shared concurrency limit measured
from the child runs' own timestamps, two fleet runs at once, dry runs, and recovery.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.concurrency import _leases as prefect_leases

from flows.rotate_fleet import CREDENTIAL_AGE_KEY, FleetReport, rotate_mssql_fleet
from rotation.errors import RotationError
from rotation.fleet import Decision, FleetMode
from sandbox.cluster import Database, Sandbox
from tests.e2e.test_crashes import report_the_dead_run_as_crashed, run_until_killed
from tests.fault_matrix import proves
from tests.support import assert_rotated, is_paused

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
LONG_AGO = "2024-01-01T00:00:00Z"


# Each test starts without the shared limit (the fleet creates it with its own size).
pytestmark = pytest.mark.usefixtures("fresh_concurrency_limit")


@pytest.fixture
def fleet_namespace(sandbox: Sandbox) -> str:
    namespace = f"fleet-{uuid.uuid4().hex[:8]}"
    sandbox.ensure_namespace(namespace)
    return namespace


def _make(sandbox: Sandbox, namespace: str, name: str, *, due: bool = True) -> Database:
    db = sandbox.create_database(namespace, name, replicas=1)
    if due:  # its credentials became active long ago
        sandbox.core.patch_namespaced_secret(
            f"{name}-auth",
            namespace,
            {"metadata": {"annotations": {"kubedb.com/auth-active-from": LONG_AGO}}},
        )
    return db


def _child_runs(names: list[str]) -> list[FlowRun]:
    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"rotate-auth {n}" for n in names]))
        )


def _most_at_once(runs: list[FlowRun]) -> int:
    """The largest number of runs that were running at the same moment, by their own timestamps."""
    edges: list[tuple[dt.datetime, int]] = []
    for run in runs:
        assert run.start_time is not None and run.end_time is not None, run.name
        edges += [(run.start_time, 1), (run.end_time, -1)]
    most = running = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # an end before a start at a tie
        running += step
        most = max(most, running)
    return most


def _artifact(key: str) -> str:
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return str(max(artifacts, key=lambda artifact: str(artifact.created)).data)


@proves(
    fault="a fleet of six databases: three due, one not due, one due but paused by another operation, one "
    "due whose replica ignores the new password",
    where="one namespace, rotate-mssql-fleet with concurrency 2",
    outcome="the three due ones rotated, each as its own flow run; the rest reported with their reasons; "
    "the failing one rolled back and named; the fleet run fails; never more than 2 at once (run timestamps)",
)
def test_a_fleet_run_rotates_what_is_due_reports_the_rest_and_fails_only_for_what_failed(
    sandbox: Sandbox, fleet_namespace: str
) -> None:
    ns = fleet_namespace
    due = [_make(sandbox, ns, f"due-{i}") for i in range(3)]
    fresh = _make(sandbox, ns, "fresh", due=False)
    paused = _make(sandbox, ns, "paused")
    failing = _make(sandbox, ns, "failing")
    originals = {db.name: db.secret_data()["password"] for db in [*due, fresh, paused, failing]}
    theirs = {"type": "Paused", "status": "True", "reason": "Paused", "message": "MSSQLServerOpsRequest x"}
    sandbox.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "paused", {"status": {"conditions": [theirs]}}
    )
    failing.instance("failing-0").faults.ignore_password_changes = True

    with pytest.raises(
        RotationError, match=rf"1 of 6 database\(s\) failed: {ns}/failing: .*rejects the new password"
    ):
        rotate_mssql_fleet(namespaces=[ns], max_age="30d", concurrency=2)

    for db in due:
        assert_rotated(db, originals[db.name])
    for db in (fresh, paused, failing):
        assert db.secret_data()["password"] == originals[db.name] and "password.next" not in db.secret_data()
    assert is_paused(paused)  # its owner's pause is untouched
    children = _child_runs([f"{ns}/{db.name}" for db in [*due, failing]])
    assert sorted(r.name for r in children) == sorted(
        f"rotate-auth {ns}/{n}" for n in ["due-0", "due-1", "due-2", "failing"]
    )
    assert _most_at_once(children) <= 2
    report = _artifact("rotate-fleet-rotate")
    assert "6 database(s): 1 Failed, 3 Successful, 1 not due, 1 skipped." in report
    assert f"| {ns}/fresh | not due | credentials 0m old; due at 30d0h (max_age) |" in report
    assert (
        f"| {ns}/paused | skipped | paused by another operation: MSSQLServerOpsRequest x (in effect) |"
        in report
    )
    assert report.count("/runs/flow-run/") == 4  # a link to each rotation's own run


@proves(
    fault="two fleet runs started at once over the same four due databases, each with concurrency 2",
    where="two rotate-mssql-fleet runs in one process, one shared concurrency limit",
    outcome="never more than 2 rotations at once across both (run timestamps); each database rotated "
    "exactly once (the other run finds it rotated or being rotated, and skips it)",
)
def test_two_fleet_runs_at_once_share_the_limit_and_never_rotate_a_database_twice(
    sandbox: Sandbox, fleet_namespace: str
) -> None:
    ns = fleet_namespace
    dbs = [_make(sandbox, ns, f"db-{i}") for i in range(4)]
    originals = {db.name: db.secret_data()["password"] for db in dbs}
    reports: list[FleetReport] = []
    errors: list[BaseException] = []

    def fleet() -> None:
        try:
            reports.append(rotate_mssql_fleet(namespaces=[ns], max_age="30d", concurrency=2))
        except BaseException as exc:
            errors.append(exc)

    runs = [threading.Thread(target=fleet) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=180)

    assert errors == [] and len(reports) == 2
    for db in dbs:
        assert_rotated(db, originals[db.name])  # .prev is the original: rotated once, not twice
    rotated = [o.planned.ref for r in reports for o in r.outcomes if o.outcome == "Successful"]
    assert sorted(rotated) == sorted(f"{ns}/{db.name}" for db in dbs)
    assert _most_at_once(_child_runs([f"{ns}/{db.name}" for db in dbs])) <= 2


def test_a_dry_run_plans_and_reports_but_changes_nothing(sandbox: Sandbox, fleet_namespace: str) -> None:
    db = _make(sandbox, fleet_namespace, "due")
    original = db.secret_data()["password"]

    report = rotate_mssql_fleet(namespaces=[fleet_namespace], dry_run=True)

    assert [(o.planned.decision, o.outcome) for o in report.outcomes] == [(Decision.DUE, "planned")]
    assert db.secret_data()["password"] == original and not _child_runs([f"{fleet_namespace}/due"])
    assert "Fleet rotate (dry run)" in _artifact("rotate-fleet-rotate")


def test_a_dry_run_publishes_every_databases_credential_age_soonest_due_first(
    sandbox: Sandbox, fleet_namespace: str
) -> None:
    """The documented way to answer "which databases are overdue": a table artifact, one row each."""
    _make(sandbox, fleet_namespace, "fresh", due=False)  # its credentials were made a moment ago
    _make(sandbox, fleet_namespace, "overdue")

    rotate_mssql_fleet(namespaces=[fleet_namespace], dry_run=True)

    with get_client(sync_client=True) as prefect:
        [artifact] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[CREDENTIAL_AGE_KEY])),
            limit=1,
            sort=ArtifactSort.CREATED_DESC,
        )
    assert artifact.type == "table" and "1 overdue" in str(artifact.description)
    rows = [
        row for row in json.loads(str(artifact.data)) if row["database"].startswith(f"{fleet_namespace}/")
    ]
    assert [row["database"] for row in rows] == [f"{fleet_namespace}/overdue", f"{fleet_namespace}/fresh"]
    assert (
        rows[0]["status"].startswith("overdue by") and rows[0]["credentials since"] == "2024-01-01 00:00 UTC"
    )
    assert rows[1]["status"].startswith("due in 29d") and rows[1]["rule"] == "max_age 30d0h"


@proves(
    fault="a rotation killed mid-way (SIGKILL between two replicas' ALTER LOGIN), next to a database "
    "that is due",
    where="the flow's process (tests/e2e/crash_driver.py); then rotate-mssql-fleet in recover mode",
    outcome="recovery finishes the interrupted rotation (rolled forward, resumed, unlocked) and leaves "
    "the due database alone",
)
def test_recovery_finishes_interrupted_rotations_and_only_those(
    sandbox: Sandbox, fleet_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The recovering run watches the dead run's 3 s Lease for the longer of that and its own lease.
    monkeypatch.setenv("MSSQL_AUTH_ROTATION_LEASE_SECONDS", "3")
    ns = fleet_namespace
    crashed = sandbox.create_database(ns, "crashed", replicas=3)
    due = _make(sandbox, ns, "due")
    originals = {db.name: db.secret_data()["password"] for db in (crashed, due)}
    run_until_killed(crashed, "mid-set")
    report_the_dead_run_as_crashed(crashed)

    report = rotate_mssql_fleet(namespaces=[ns], mode=FleetMode.RECOVER)

    outcomes = {o.planned.name: o for o in report.outcomes}
    assert outcomes["crashed"].planned.decision is Decision.INTERRUPTED
    assert outcomes["crashed"].outcome == "Successful"
    assert (outcomes["due"].planned.decision, outcomes["due"].outcome) == (Decision.NOT_DUE, "")
    assert_rotated(crashed, originals["crashed"])
    assert due.secret_data()["password"] == originals["due"]


@proves(
    fault="every renewal of the rotations' slots of the shared concurrency limit fails (the Prefect API "
    "unreachable for them; Prefect gives up after its first attempt)",
    where="Prefect's client: renew_concurrency_lease, while rotate-mssql-fleet rotates two due databases",
    outcome="only logged: no rotation is interrupted (Prefect's strict default would inject a "
    "cancellation into the rotation's thread, anywhere); both rotated; the fleet run completes with "
    "its report",
)
def test_failed_renewals_of_the_shared_limit_never_interrupt_a_rotation(
    sandbox: Sandbox, fleet_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = fleet_namespace
    dbs = [_make(sandbox, ns, f"db-{i}") for i in range(2)]
    originals = {db.name: db.secret_data()["password"] for db in dbs}
    renewals: list[object] = []

    def unreachable(self: SyncPrefectClient, lease_id: object, lease_duration: float) -> None:
        renewals.append(lease_id)
        raise httpx.ConnectError("injected: the Prefect API does not answer")

    monkeypatch.setattr(SyncPrefectClient, "renew_concurrency_lease", unreachable)
    monkeypatch.setattr(prefect_leases, "_RENEWAL_MAX_ATTEMPTS", 1)  # give up at the first failure

    report = rotate_mssql_fleet(namespaces=[ns], max_age="30d", concurrency=2)

    assert len(renewals) >= 2, "the renewals were never attempted: the fault was not exercised"
    assert [o.outcome for o in report.outcomes] == ["Successful", "Successful"]
    for db in dbs:
        assert_rotated(db, originals[db.name])
