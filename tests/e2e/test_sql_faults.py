"""SQL Server faults from the sandbox's TDS servers, and permanent faults during the restarts.

Transient faults are retried by the affected task and the rotation completes; permanent ones
roll back (before any restart) or stop within the timeout, always resuming the database.
"""

from __future__ import annotations

import pytest

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import StepTimeout, VerificationFailed
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import assert_rotated, assert_untouched, event_reasons, is_paused


@proves(
    fault="two logins fail with error 40613 (database not currently available)",
    where="replica 1's SQL Server (sandbox TDS fault switch)",
    outcome="the inspect task retries and the rotation completes",
)
def test_transient_login_failures_are_retried(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    faults = db.instance(f"{db.name}-1").faults
    faults.fail_next_logins = 2

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert faults.fail_next_logins == 0  # both failures were served
    assert_rotated(db, original)


@proves(
    fault="the connection drops right after ALTER LOGIN committed (the client cannot know it did)",
    where="replica 2's SQL Server (sandbox TDS fault switch)",
    outcome="Set is retried, finds the new password already works there, skips it; the rotation completes",
)
def test_a_connection_dropped_after_the_change_committed_is_retried_idempotently(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    faults = db.instance(f"{db.name}-2").faults
    faults.drop_after_next_changes = 1

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert faults.drop_after_next_changes == 0
    assert_rotated(db, original)


@proves(
    fault="every reply delayed by 0.1 s (several per login)",
    where="the primary's SQL Server (sandbox TDS fault switch)",
    outcome="the rotation completes (slower)",
)
def test_slow_sql_replies_do_not_break_the_rotation(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    db.instance(f"{db.name}-0").faults.reply_delay = 0.1

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_rotated(db, original)


@proves(
    fault="a replica refuses the new password (error 15118, a stricter local policy)",
    where="replica 1's SQL Server",
    outcome="not retried; the old password is put back on the replicas already changed; no pod restarted; "
    "resumed; the flow fails naming the replica",
)
def test_a_replica_that_rejects_the_new_password_rolls_everything_back(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    db.instance(f"{db.name}-1").faults.reject_password_changes = True

    with pytest.raises(Exception, match=f"{db.name}-1 .* refused the new password") as failure:
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert "not complex enough" in str(failure.value)
    assert_untouched(db, original)
    assert "Failed" in event_reasons(db)


@proves(
    fault="a replica reports success for ALTER LOGIN but keeps the old password",
    where="replica 2's SQL Server",
    outcome="the verify gate fails naming the replica; old password restored everywhere; "
    "no pod restarted; resumed",
)
def test_a_replica_that_ignores_the_new_password_is_caught_by_the_gate(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    db.instance(f"{db.name}-2").faults.ignore_password_changes = True

    with pytest.raises(VerificationFailed, match=f"{db.name}-2 .* rejects the new password"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_untouched(db, original)


@proves(
    fault="a restarted pod never becomes Ready",
    where="the sandbox kubelet (its container never starts)",
    outcome="the flow fails within the timeout naming the pod and how to recover; resumed; "
    "after the pod is fixed, a re-run finishes the restarts without rotating again",
)
def test_a_pod_that_never_becomes_ready_fails_within_the_timeout_and_is_recoverable(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    stuck = f"{db.name}-1"  # the first pod restarted, so the timeout is all its own
    db.sandbox.fail_pod_starts(db.namespace, stuck)

    with pytest.raises(
        StepTimeout, match=f"{stuck} was not back and Ready within 10s.*run the rotation again"
    ):
        rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="10s")

    assert not is_paused(db)
    committed = db.secret_data()
    assert committed["password.prev"] == original
    db.sandbox.fail_pod_starts(db.namespace, stuck, failing=False)
    db.sandbox.core.delete_namespaced_pod(stuck, db.namespace)  # what an operator does to a stuck pod
    # The primary was not restarted yet and still runs with the old password: the database is not
    # Ready, and the re-run proceeds anyway because it finishes an interrupted rotation.
    db.sandbox.wait_for(lambda: db.get()["status"]["phase"] != "Ready", "the provisioner to see the damage")
    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    assert db.secret_data()["password"] == committed["password"]  # finished, not rotated again
    assert_rotated(db, original)
