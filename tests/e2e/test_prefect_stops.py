"""When Prefect itself stops a run: the hooks that replace a `finally` that never ran, a fleet run
cancelled or SIGKILLed on a real process worker, and the events each rotation emits.

The hook tests kill a rotation in its own process (tests/e2e/crash_driver.py) and then run the hook
as Prefect's supervising process would. The fleet tests run the `scheduled` deployment on the local
stack's process worker (a real Prefect server and its automations).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from rotation import constants as c
from sandbox.cluster import Database, Sandbox
from sandbox.prefect_stack import PrefectStack
from tasks.aftermath import REASON, clean_up
from tests.e2e.conftest import DatabaseFactory
from tests.e2e.test_crashes import lock_of, run_until_killed
from tests.e2e.test_deployments import deployments, flow_run_pid, wait_for_runs
from tests.fault_matrix import proves
from tests.support import assert_rotated, is_paused, logs_in

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
LONG_AGO = "2024-01-01T00:00:00Z"
HEALING_BUDGET_S = 120.0  # the target: healed within 2 minutes of the kill
COOPERATIVE_BUDGET_S = 30.0  # a process worker's grace period between SIGTERM and SIGKILL


def _interruption_events(db: Database) -> list[str]:
    events = db.sandbox.core.list_namespaced_event(db.namespace).items
    return [e.message for e in events if e.reason == REASON and e.involved_object.name == db.name]


def _holder(db: Database) -> str:
    lease = lock_of(db)
    assert lease is not None and lease.spec.holder_identity, "the killed run held no lock"
    return str(lease.spec.holder_identity)


@proves(
    fault="the rotation's process is SIGKILLed (no finally): after Pause, or between two replicas' "
    "ALTER LOGIN, or after Pause while another run now holds the lock",
    where="the flow's process (tests/e2e/crash_driver.py); then the on_crashed hook, as Prefect's "
    "supervising process runs it",
    outcome="after Pause: the hook removes its pause and releases its lock; mid-Set (a password "
    "staged): the lock is released but the database stays paused; another holder: nothing of theirs "
    "is touched; each time a RotationInterrupted Warning Event says what was done and what finishes it",
)
@pytest.mark.parametrize("point", ["pause-database", "mid-set", "taken-over"])
def test_the_crash_hook_releases_only_what_is_safe_to_release(
    make_database: DatabaseFactory, point: str
) -> None:
    db = make_database(replicas=3)
    run_until_killed(db, "pause-database" if point == "taken-over" else point)
    holder = _holder(db)
    if point == "taken-over":  # another run took the lapsed lock over (as recovery does)
        lease = lock_of(db)
        assert lease is not None
        lease.spec.holder_identity = "prefect-flow-run/someone-else"
        client.CoordinationV1Api(db.sandbox.api).replace_namespaced_lease(
            lease.metadata.name, db.namespace, lease
        )

    done = clean_up(db.namespace, db.name, holder, "run x ended Crashed")

    lease = lock_of(db)
    held_by = lease.spec.holder_identity if lease is not None else None
    if point == "pause-database":
        assert not is_paused(db) and held_by is None
        assert "Its pause was removed" in done and "Its lock was released" in done
    elif point == "mid-set":
        assert is_paused(db) and held_by is None
        assert c.KEY_PASSWORD_NEXT in db.secret_data()
        assert "stays paused: a new password is staged" in done and "finishes" in done
    else:
        assert is_paused(db) and held_by == "prefect-flow-run/someone-else"
        assert "left to prefect-flow-run/someone-else" in done and "lock was released" not in done
    db.sandbox.wait_for(lambda: done in _interruption_events(db), "the RotationInterrupted Event")


def _due(sandbox: Sandbox, namespace: str, name: str, replicas: int) -> Database:
    db = sandbox.create_database(namespace, name, replicas=replicas)
    sandbox.core.patch_namespaced_secret(
        f"{name}-auth", namespace, {"metadata": {"annotations": {"kubedb.com/auth-active-from": LONG_AGO}}}
    )
    return db


def _start_fleet(stack: PrefectStack, namespace: str, concurrency: int) -> dict[str, Any]:
    scheduled = deployments(stack)["scheduled"]
    return stack.api(  # type: ignore[no-any-return]
        "POST",
        f"/deployments/{scheduled['id']}/create_flow_run",
        {"parameters": {"namespaces": [namespace], "concurrency": concurrency}},
    )


def _children(stack: PrefectStack, parent_id: str) -> list[dict[str, Any]]:
    return stack.api(  # type: ignore[no-any-return]
        "POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}}
    )


def _settled(db: Database) -> bool:
    """Nothing of a rotation left: resumed, unlocked, nothing staged or pending, every pod Ready and
    logging in with the secret's password."""
    secret = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace)
    keys, notes = set(secret.data or {}), secret.metadata.annotations or {}
    if c.KEY_PASSWORD_NEXT in keys or c.ANNOTATION_RESTART_PENDING in notes or is_paused(db):
        return False
    lease = lock_of(db)
    if lease is not None and lease.spec.holder_identity:
        return False
    if not db.sandbox.pods_ready(db.namespace, db.name):
        return False
    password = db.secret_data()["password"]
    return all(logs_in(db, pod, password) for pod in db.pods)


@proves(
    fault="a rotate-mssql-fleet run is cancelled (Prefect's UI / API) while its two rotations wait for a "
    "restarted pod that does not come back",
    where="the fleet run's process on a process worker (SIGTERM reaches only its main thread)",
    outcome="every rotation stops at once (not at the SIGKILL 30 s later): each database resumed and "
    "unlocked, its new password committed and working on every replica; the fleet run ends Cancelled; "
    "a later recover run finishes the restarts",
)
def test_a_cancelled_fleet_run_stops_its_rotations_and_resumes_every_database(
    stack: PrefectStack, sandbox: Sandbox
) -> None:
    ns = f"fleet-{uuid.uuid4().hex[:8]}"
    sandbox.ensure_namespace(ns)
    dbs = [_due(sandbox, ns, f"db-{i}", replicas=2) for i in range(2)]
    originals = {db.name: db.secret_data()["password"] for db in dbs}
    for db in dbs:  # the first pod each rotation restarts never comes back
        sandbox.fail_pod_starts(ns, f"{db.name}-1")
    fleet = _start_fleet(stack, ns, concurrency=2)
    sandbox.wait_for(
        lambda: (
            all(c.ANNOTATION_RESTART_PENDING in _annotations(db) for db in dbs)
            and all(not _pod_ready(db, f"{db.name}-1") for db in dbs)
        ),
        "both rotations waiting for a restarted pod",
        timeout=120,
    )

    stack.api("POST", f"/flow_runs/{fleet['id']}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    cancelled_at = time.monotonic()
    sandbox.wait_for(
        lambda: all(not is_paused(db) and _unlocked(db) for db in dbs),
        "every database resumed and unlocked",
        timeout=COOPERATIVE_BUDGET_S,
    )
    took = time.monotonic() - cancelled_at

    [run] = wait_for_runs(stack, [fleet["id"]]).values()
    assert run["state_type"] == "CANCELLED"
    for db in dbs:
        password = db.secret_data()["password"]
        assert password != originals[db.name] and logs_in(db, f"{db.name}-0", password)
        assert c.ANNOTATION_RESTART_PENDING in _annotations(db)  # the restarts are recovery's to finish
        sandbox.fail_pod_starts(ns, f"{db.name}-1", False)
    print(f"every database resumed {took:.1f} s after the cancellation")


def _annotations(db: Database) -> dict[str, str]:
    secret = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace)
    return dict(secret.metadata.annotations or {})


def _pod_ready(db: Database, pod: str) -> bool:
    found = db.sandbox.core.read_namespaced_pod(pod, db.namespace)
    return any(cond.type == "Ready" and cond.status == "True" for cond in found.status.conditions or [])


def _unlocked(db: Database) -> bool:
    lease = lock_of(db)
    return lease is None or not lease.spec.holder_identity


@proves(
    fault="SIGKILL of a rotate-mssql-fleet run's process at the first committed ALTER LOGIN (three due "
    "databases, two rotations in flight in its threads), the worker alive",
    where="the process a Prefect process worker started for rotate-mssql-fleet/scheduled (local stack)",
    outcome="its on_crashed hook marks the dead rotations Crashed and releases their locks; the trigger on "
    "a crashed fleet run starts recover over the run's own namespaces, which takes no slot of the "
    "shared limit and watches any Lease that still looks fresh; every database ends settled (the "
    "interrupted ones rotated) within 2 minutes of the kill (measured)",
)
def test_a_killed_fleet_run_is_healed_by_the_automation_within_two_minutes(
    stack: PrefectStack, sandbox: Sandbox
) -> None:
    ns = f"fleet-{uuid.uuid4().hex[:8]}"
    sandbox.ensure_namespace(ns)
    dbs = [_due(sandbox, ns, f"db-{i}", replicas=2) for i in range(3)]
    originals = {db.name: db.secret_data()["password"] for db in dbs}
    for db in dbs:  # slow replies: the kill lands between two replicas' ALTER LOGIN
        for pod in db.pods:
            db.instance(pod).faults.reply_delay = 0.1
    fleet = _start_fleet(stack, ns, concurrency=2)

    def first_alter_login() -> bool:
        return any(b.kind == "alter-login" for db in dbs for pod in db.pods for b in db.instance(pod).batches)

    sandbox.wait_for(first_alter_login, "the fleet's first ALTER LOGIN", timeout=120)
    pid = flow_run_pid(fleet["id"])
    assert pid is not None, "the fleet run's process was not found"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for db in dbs:
        for pod in db.pods:
            db.instance(pod).faults.reply_delay = 0
    touched = [db for db in dbs if any(db.instance(pod).batches for pod in db.pods)]

    sandbox.wait_for(
        lambda: all(_settled(db) for db in dbs), "every database settled", timeout=HEALING_BUDGET_S
    )
    took = time.monotonic() - killed_at

    assert stack.api("GET", f"/flow_runs/{fleet['id']}")["state_type"] == "CRASHED"
    children = _children(stack, fleet["id"])
    assert children and all(run["state_type"] != "RUNNING" for run in children), [
        (run["name"], run["state_type"]) for run in children
    ]
    recover = deployments(stack)["recover"]
    recoveries = stack.api(
        "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [recover["id"]]}}}
    )
    assert [r["parameters"].get("namespaces") for r in recoveries if r["parameters"].get("namespaces")] == [
        [ns]
    ]
    interrupted = [db for db in touched if db.secret_data()["password"] != originals[db.name]]
    assert interrupted, "no rotation had committed anything: the kill came too early to prove anything"
    for db in interrupted:
        assert_rotated(db, originals[db.name])
    print(f"fleet healed {took:.1f} s after the kill")  # the measured number, for docs/performance.md


@proves(
    fault="none, and a replica that ignores the new password",
    where="rotate-mssql-auth/manual runs on the local stack's worker",
    outcome="each rotation emits Prefect events on the resource kubedb.mssqlserver.<namespace>.<name>: "
    "started and succeeded; started, rolled-back and failed (with the error, no secret) for the other",
)
def test_each_rotation_emits_events_about_its_database(
    stack: PrefectStack, make_database: DatabaseFactory
) -> None:
    good, bad = make_database(replicas=1), make_database(replicas=2)
    bad.instance(f"{bad.name}-1").faults.ignore_password_changes = True
    manual = deployments(stack)["manual"]
    runs = [
        stack.api(
            "POST",
            f"/deployments/{manual['id']}/create_flow_run",
            {"parameters": {"namespace": db.namespace, "database": db.name}},
        )["id"]
        for db in (good, bad)
    ]
    wait_for_runs(stack, runs)

    def events_of(db: Database) -> list[dict[str, Any]]:
        resource = f"kubedb.mssqlserver.{db.namespace}.{db.name}"
        found = stack.api("POST", "/events/filter", {"filter": {"resource": {"id": [resource]}}, "limit": 50})
        return sorted(found["events"], key=lambda e: e["occurred"])

    good.sandbox.wait_for(  # the server writes events asynchronously
        lambda: len(events_of(good)) >= 2 and len(events_of(bad)) >= 3, "the rotations' events", timeout=30
    )
    assert [e["event"] for e in events_of(good)] == [
        "kubedb.mssqlserver.rotation.started",
        "kubedb.mssqlserver.rotation.succeeded",
    ]
    failed = events_of(bad)
    assert [e["event"] for e in failed] == [
        "kubedb.mssqlserver.rotation.started",
        "kubedb.mssqlserver.rotation.rolled-back",
        "kubedb.mssqlserver.rotation.failed",
    ]
    assert "rejects the new password" in failed[-1]["payload"]["error"]
    assert all(e["related"][0]["prefect.resource.id"].startswith("prefect.flow-run.") for e in failed)
