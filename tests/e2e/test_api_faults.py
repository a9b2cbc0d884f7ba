"""Kubernetes API faults between the rotation flow and the API server (the sandbox's fault proxy).

Each test makes one request of the flow fail, checks that the rotation still ends as it should, and
that the failed request was retried: by Prefect (the task's retry is read from Prefect's own "Retry
n/m will start" log record) or, for a dropped connection on an idempotent verb, by urllib3 inside the
kubernetes client (see tests/integration/test_fault_proxy.py). Permanent errors are not retried.

The sandbox's own controllers talk to the API server directly, so only the flow sees the faults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import PermanentError, StepTimeout
from rotation.report import RotationReport
from sandbox.cluster import Database, Sandbox
from sandbox.faultproxy import FaultProxy
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import (
    assert_rotated,
    assert_untouched,
    event_reasons,
    is_paused,
    task_run_log,
    terminated_pods,
)

URLLIB3_DEFAULT_RETRIES = 3  # urllib3's Retry.DEFAULT, which the kubernetes client keeps


class PrefectRetries(logging.Handler):
    """Collects the name of the task each time Prefect schedules a retry of it."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Prefect's "- Retry N/M will start", as tasks/_policy.py rewrites it: "- retry N will start".
        if " - retry " in record.getMessage().lower():
            self.tasks.append(str(getattr(record, "task_name", "?")))

    def of(self, task: str) -> int:
        return self.tasks.count(task)


@pytest.fixture
def retries() -> Iterator[PrefectRetries]:
    with task_run_log(handler := PrefectRetries()):
        yield handler


def assert_completed(db: Database, old: str, report: RotationReport) -> None:
    assert report.outcome == "Successful"
    assert_rotated(db, old)


@proves(
    fault="two 503 Service Unavailable answers",
    where="Kubernetes API: the PUT of the auth secret (Stage)",
    outcome="the stage task retries twice and the rotation completes",
)
def test_a_503_on_staging_the_new_password_is_retried_and_the_rotation_completes(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    secret_put = f"/namespaces/{db.namespace}/secrets/{db.name}-auth$"
    proxy.add_fault("PUT", secret_put, times=2, status=503)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_completed(db, old, report)
    assert retries.of("stage-new-password") == 2
    assert proxy.hits("PUT", secret_put) > 2


@proves(
    fault="a 409 Conflict (a concurrent writer)",
    where="Kubernetes API: the PATCH of the MSSQLServer status (Pause)",
    outcome="the pause task retries once and the rotation completes",
)
def test_a_conflict_on_pausing_the_database_is_retried_and_the_rotation_completes(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    status_patch = f"/namespaces/{db.namespace}/mssqlservers/{db.name}/status$"
    # A concurrent writer: the first status patch (the pause) finds a newer resourceVersion.
    proxy.add_fault("PATCH", status_patch, times=1, status=409)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_completed(db, old, report)
    assert retries.of("pause-database") == 1
    assert proxy.hits("PATCH", status_patch) > 1


@proves(
    fault="a 500 Internal Server Error",
    where="Kubernetes API: the eviction of the first secondary pod",
    outcome="the evict task retries once; restart order kept; the rotation completes",
)
def test_a_500_on_evicting_a_pod_is_retried_and_the_rotation_completes(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    first = f"{db.name}-1"  # the first secondary: restarted first
    eviction = f"/namespaces/{db.namespace}/pods/{first}/eviction$"
    proxy.add_fault("POST", eviction, times=1, status=500)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_completed(db, old, report)
    assert retries.of("evict-pod") == 1
    assert proxy.hits("POST", eviction) == 2
    assert terminated_pods(db) == [first, f"{db.name}-2", f"{db.name}-0"]


@proves(
    fault="evictions throttled with 429 Too Many Requests over and over, with no disruption budget "
    "named (API server throttling)",
    where="Kubernetes API: every eviction of the first secondary pod",
    outcome="asked again every second for half the timeout, then the pod is deleted (UID precondition) "
    "with a DeletePod Warning Event; the rotation completes",
)
def test_an_eviction_throttled_for_too_long_falls_back_to_deleting_the_pod(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    first = f"{db.name}-1"
    eviction = f"/namespaces/{db.namespace}/pods/{first}/eviction$"
    proxy.add_fault("POST", eviction, times=1000, status=429)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="10s")

    assert_completed(db, old, report)
    assert proxy.hits("POST", eviction) >= 2  # asked again while refused
    assert proxy.hits("DELETE", f"/namespaces/{db.namespace}/pods/{first}$") == 1
    assert retries.of("evict-pod") == 0  # a refused eviction is an answer, not an error
    assert terminated_pods(db) == [first, f"{db.name}-2", f"{db.name}-0"]
    assert event_reasons(db).count("DeletePod") == 1


@proves(
    fault="evictions throttled with 429 with no disruption budget named, of a pod that a "
    "PodDisruptionBudget selects",
    where="Kubernetes API: every eviction of the first secondary pod (budget maxUnavailable 1)",
    outcome="never deleted: the budgets are listed before the fallback and the one that selects the pod "
    "keeps it; the step fails after its timeout naming the budget; the new password stays committed",
)
def test_a_throttled_eviction_of_a_pod_a_budget_selects_never_falls_back_to_deleting_it(
    make_database: DatabaseFactory, proxy: FaultProxy
) -> None:
    db = make_database(replicas=3, pdb={"maxUnavailable": 1})
    first = f"{db.name}-1"
    eviction = f"/namespaces/{db.namespace}/pods/{first}/eviction$"
    proxy.add_fault("POST", eviction, times=1000, status=429)

    with pytest.raises(
        StepTimeout, match=f"PodDisruptionBudget {db.namespace}/{db.name} .*No pod was deleted"
    ):
        rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="10s")

    assert proxy.hits("GET", f"/namespaces/{db.namespace}/poddisruptionbudgets$") >= 1
    assert proxy.hits("DELETE", f"/namespaces/{db.namespace}/pods/{first}$") == 0
    assert terminated_pods(db) == []
    assert "DeletePod" not in event_reasons(db)
    assert not is_paused(db)


@proves(
    fault="one connection closed without a response",
    where="Kubernetes API: a GET of the MSSQLServer (Inspect)",
    outcome="the kubernetes client (urllib3) re-sends the GET at once; no task retry; the rotation completes",
)
def test_a_dropped_connection_on_reading_the_database_is_resent_and_the_rotation_completes(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    read = f"/namespaces/{db.namespace}/mssqlservers/{db.name}$"
    proxy.add_fault("GET", read, times=1, drop=True)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_completed(db, old, report)
    assert proxy.hits("GET", read) > 1
    # One drop on a GET never reaches the flow: urllib3 re-sent the read at once.
    assert retries.of("inspect-database") == 0


@proves(
    fault="four connections in a row closed without a response (beyond urllib3's 3 re-sends)",
    where="Kubernetes API: a GET of the MSSQLServer (Inspect)",
    outcome="the inspect task retries once and the rotation completes",
)
def test_dropped_connections_beyond_the_clients_own_retries_are_retried_by_the_task(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    read = f"/namespaces/{db.namespace}/mssqlservers/{db.name}$"
    drops = URLLIB3_DEFAULT_RETRIES + 1  # the first read of the database and all urllib3's re-sends
    proxy.add_fault("GET", read, times=drops, drop=True)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_completed(db, old, report)
    assert retries.of("inspect-database") == 1
    assert proxy.hits("GET", read) > drops


@proves(
    fault="0.5 s delay on five pod lists/watches",
    where="Kubernetes API: GET (list and watch) of the namespace's pods",
    outcome="no retry, the rotation completes",
)
def test_slow_pod_lists_and_watches_only_slow_the_rotation_down(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    pods = f"/namespaces/{db.namespace}/pods$"  # both the list and the watch of the database's pods
    proxy.add_fault("GET", pods, times=5, delay=0.5)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_completed(db, old, report)
    assert proxy.hits("GET", pods) >= 5  # every delay was served
    assert retries.tasks == []  # a slow answer is not a failure


@proves(
    fault="a 403 Forbidden (a missing permission)",
    where="Kubernetes API: the PUT of the auth secret (Stage)",
    outcome="not retried: PermanentError naming the permission; resumed, unlocked, old password works",
)
def test_a_forbidden_secret_update_is_not_retried_and_leaves_the_old_password_everywhere(
    make_database: DatabaseFactory, proxy: FaultProxy, retries: PrefectRetries, sandbox: Sandbox
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    secret_put = f"/namespaces/{db.namespace}/secrets/{db.name}-auth$"
    # The first write of the secret is the Stage step: before any SQL Server is touched.
    proxy.add_fault("PUT", secret_put, times=1, status=403)

    with pytest.raises(PermanentError, match=r"refused to update Secret .*403 Forbidden.*permissions"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert proxy.hits("PUT", secret_put) == 1
    assert retries.of("stage-new-password") == 0
    assert_untouched(db, old)
