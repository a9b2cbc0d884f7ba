"""Another operation starts on the database while a rotation holds it (issue 20, item 6).

Before each write step (Set, the check before Commit, Commit, UpdatePetSets, each eviction) the run
checks that its pause is the only one and no KubeDB MSSQLServerOpsRequest of the database is active.
Here the other operation appears at a step boundary: the flow's own task, run with an
``on_completion`` hook that writes to the API server (a real status patch or ops request, nothing
mocked), as tests/e2e/crash_driver.py kills the process at the same boundaries. Before the commit
the run puts the old password back; after it the secret keeps the new one and a re-run, once the
other operation has ended, finishes. Either way the other operation's pause is kept and ours goes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import flows.rotate_auth as flow_module
from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import DatabaseBusy
from sandbox.cluster import Database
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import assert_rotated, assert_untouched, logs_in, terminated_pods

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
THEIRS = "MSSQLServerOpsRequest msops-reconfigure is in process"
# The flow's task after which the other operation appears, and the write step that must then refuse.
BEFORE = {
    "set": "stage_new_password",
    "commit": "verify_logins",
    "update-petsets": "commit_secret",
    "restart": "get_next_pod",
}


def add_foreign_pause(db: Database) -> None:
    """What KubeDB's ops-manager writes for an ops request of its own: a Paused condition, in effect."""
    conditions = db.get()["status"].get("conditions") or []
    theirs = {"type": "Paused", "status": "True", "reason": "Paused", "message": THEIRS}
    db.sandbox.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"status": {"conditions": [*conditions, theirs]}}
    )


def remove_foreign_pause(db: Database) -> None:
    """The other operation ends and resumes the database (only its own condition)."""
    conditions = [c for c in db.get()["status"].get("conditions") or [] if c.get("message") != THEIRS]
    db.sandbox.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"status": {"conditions": conditions}}
    )


def paused_by(db: Database) -> list[tuple[str, str]]:
    conditions = db.get()["status"].get("conditions") or []
    return [(c["status"], c["message"]) for c in conditions if c["type"] == "Paused"]


def once_after(monkeypatch: pytest.MonkeyPatch, task_name: str, act: Callable[[], None]) -> None:
    """Run ``act`` when the flow's task ``task_name`` first completes, before the flow goes on."""
    done: list[bool] = []

    def hook(*_: Any) -> None:
        if not done:
            done.append(True)
            act()

    task = getattr(flow_module, task_name)
    monkeypatch.setattr(flow_module, task_name, task.with_options(on_completion=[hook]))


def run_refused(db: Database) -> DatabaseBusy:
    with pytest.raises(DatabaseBusy) as refused:
        rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="30s")
    return refused.value


@proves(
    fault="another operation pauses the database (its Paused beside ours) mid-rotation",
    where="right before Set, or before the commit (after Verify)",
    outcome="DatabaseBusy naming it; the old password put back on every replica, no .next keys, no "
    "restart; only our pause removed (theirs kept); once it ends, a re-run rotates",
)
@pytest.mark.parametrize("step", ["set", "commit"])
def test_another_pause_before_the_commit_rolls_back_and_keeps_their_pause(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    once_after(monkeypatch, BEFORE[step], lambda: add_foreign_pause(db))

    error = run_refused(db)

    assert THEIRS in str(error) and "puts the old password back" in str(error), error
    assert paused_by(db) == [("True", THEIRS)]  # theirs kept, ours gone
    remove_foreign_pause(db)
    assert_untouched(db, original)
    monkeypatch.undo()
    assert rotate_mssql_auth(namespace=db.namespace, database=db.name).outcome == "Successful"
    assert_rotated(db, original)


@proves(
    fault="another operation pauses the database (its Paused beside ours) after the commit",
    where="right before UpdatePetSets, or before the first eviction",
    outcome="DatabaseBusy naming it and saying a re-run finishes; no pod evicted; the new password "
    "committed and accepted everywhere; only our pause removed; once it ends, a re-run finishes",
)
@pytest.mark.parametrize("step", ["update-petsets", "restart"])
def test_another_pause_after_the_commit_stops_before_any_restart_and_a_rerun_finishes(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    once_after(monkeypatch, BEFORE[step], lambda: add_foreign_pause(db))

    error = run_refused(db)

    assert THEIRS in str(error) and "run the rotation again to finish" in str(error), error
    assert paused_by(db) == [("True", THEIRS)]
    assert terminated_pods(db) == []
    secret = db.secret_data()
    assert secret["password.prev"] == original and "password.next" not in secret
    assert all(logs_in(db, pod, secret["password"]) for pod in db.pods)
    remove_foreign_pause(db)
    monkeypatch.undo()
    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    assert report.outcome == "Successful"
    assert_rotated(db, original)
    assert sorted(terminated_pods(db)) == db.pods  # each restarted once, by the re-run


@proves(
    fault="a KubeDB MSSQLServerOpsRequest of the database turns Progressing mid-rotation (no pause)",
    where="right before Set",
    outcome="DatabaseBusy naming the request; the old password put back; nothing restarted",
)
def test_an_ops_request_that_starts_before_set_stops_the_run_and_rolls_back(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    started: list[str] = []

    def start_request() -> None:
        started.append(db.sandbox.create_ops_request(db.namespace, db.name, "Restart"))
        db.sandbox.set_ops_request_phase(db.namespace, started[0], "Progressing")

    once_after(monkeypatch, BEFORE["set"], start_request)

    error = run_refused(db)

    assert f"{started[0]} (Restart, Progressing)" in str(error), error
    assert_untouched(db, original)
