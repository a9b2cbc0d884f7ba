"""The rotate-mssql-auth flow end to end: Prefect test server + sandbox, real clients only."""

from __future__ import annotations

import threading

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import InvalidRequest, RotationInProgress, VerificationFailed
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import (
    create_basic_auth_secret,
    event_reasons,
    is_paused,
    logs_in,
    mutations,
    terminated_pods,
)

KUBEDB_ORDER_3 = [
    "RotateAuth",
    "DatabasePauseSucceeded",
    "UpdateCredential",
    "UpdatePetSets",
    "GetPod--{1}",
    "EvictPod--{1}",
    "CheckPodRunning--{1}",
    "GetPod--{2}",
    "EvictPod--{2}",
    "CheckPodRunning--{2}",
    "GetPod--{0}",
    "SecretPropagated",
    "SecondariesSynchronized",
    "EvictPod--{0}",
    "CheckPodRunning--{0}",
    "RestartNodes",
    "Successful",
]


def test_a_generated_password_replaces_the_old_one_on_every_replica_of_an_availability_group(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    secret = db.secret_data()
    assert report.outcome == "Successful"
    assert secret["password"] != old
    assert secret["password.prev"] == old
    assert secret["username"] == secret["username.prev"] == "sa"
    assert "password.next" not in secret and "username.next" not in secret
    for pod in db.pods:
        assert logs_in(db, pod, secret["password"]), pod
        assert not logs_in(db, pod, old), pod
    assert [c.type for c in report.conditions] == [t.format(*db.pods) for t in KUBEDB_ORDER_3]
    spec = db.get()["spec"]["authSecret"]
    assert spec["name"] == f"{db.name}-auth" and spec["activeFrom"]


def test_secondaries_restart_before_the_primary_and_nothing_changes_while_unpaused(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert terminated_pods(db) == [f"{db.name}-1", f"{db.name}-2", f"{db.name}-0"]
    writes = mutations(db)
    assert writes, "the rotation must have written the secret and restarted pods"
    assert all(entry.paused[db.name] for entry in writes), [e for e in writes if not e.paused[db.name]]
    assert not is_paused(db)
    assert db.get()["status"]["phase"] == "Ready"


def test_the_rotation_records_kubernetes_events_on_the_database(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    reasons = event_reasons(db)
    for expected in (
        "PauseDatabase",
        "DatabasePauseSucceeded",
        "UpdateCredential",
        "EvictPod",
        "CheckPodRunning",
        "ResumeDatabase",
        "DatabaseResumeSucceeded",
    ):
        assert expected in reasons
    assert (
        reasons.index("DatabasePauseSucceeded")
        < reasons.index("UpdateCredential")
        < reasons.index("ResumeDatabase")
    )


def test_the_report_is_published_as_a_markdown_artifact(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"rotate-auth-{db.namespace}-{db.name}"])
            )
        )
    assert len(artifacts) == 1 and artifacts[0].type == "markdown"
    markdown = str(artifacts[0].data)
    assert "Successful" in markdown
    positions = [markdown.index(f"| {condition.type} |") for condition in report.conditions]
    assert positions == sorted(positions)


def test_a_standalone_database_with_one_replica_is_rotated(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)
    old = db.secret_data()["password"]

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    new = db.secret_data()["password"]
    assert [c.type for c in report.conditions][-3:] == [
        f"CheckPodRunning--{db.name}-0",
        "RestartNodes",
        "Successful",
    ]
    assert logs_in(db, f"{db.name}-0", new) and not logs_in(db, f"{db.name}-0", old)
    assert terminated_pods(db) == [f"{db.name}-0"]


def test_a_user_supplied_secret_with_quotes_and_brackets_becomes_the_auth_secret(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    chosen = "N3w'Pa]ss\"wörd-Ω'];--"
    create_basic_auth_secret(db, "my-new-auth", "sa", chosen)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, auth_secret="my-new-auth")

    assert report.auth_secret == "my-new-auth"
    assert db.get()["spec"]["authSecret"]["name"] == "my-new-auth"
    user_secret = db.secret_data("my-new-auth")
    assert user_secret["password"] == chosen and user_secret["password.prev"] == old
    assert "password.next" not in db.secret_data(f"{db.name}-auth")
    petset = db.sandbox.custom.get_namespaced_custom_object(
        "apps.k8s.appscode.com", "v1", db.namespace, "petsets", db.name
    )
    refs = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for container in petset["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if "valueFrom" in env
    }
    assert refs == {"my-new-auth"}
    for pod in db.pods:
        assert logs_in(db, pod, chosen) and not logs_in(db, pod, old)


def test_a_replica_that_ignores_the_change_blocks_every_restart_and_the_old_password_stays(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    old = db.secret_data()["password"]
    db.instance(f"{db.name}-2").faults.ignore_password_changes = True

    with pytest.raises(VerificationFailed, match=f"{db.name}-2"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert terminated_pods(db) == []
    for pod in db.pods:
        assert logs_in(db, pod, old), pod
    secret = db.secret_data()
    assert secret["password"] == old and "password.next" not in secret
    assert not is_paused(db)
    assert "Failed" in event_reasons(db)


@proves(
    fault="a database that is not Ready (a replica fails its readiness probe) with apply=IfReady",
    where="the MSSQLServer's status.phase",
    outcome="refused naming the phase and apply=Always; secret, pause and lock untouched",
)
def test_if_ready_refuses_a_database_that_is_not_ready_and_changes_nothing(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    before = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace).metadata.resource_version
    # A replica whose password changed behind KubeDB's back fails its readiness probe: the
    # provisioner then reports the database as Critical.
    db.instance(f"{db.name}-1").set_login("sa", "Changed-Behind-1ts-Back", sysadmin=True)
    db.sandbox.wait_for(lambda: db.get()["status"]["phase"] == "Critical", "the database to turn Critical")

    with pytest.raises(InvalidRequest, match="is Critical, not Ready"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    after = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace).metadata.resource_version
    assert after == before
    assert not is_paused(db)
    assert db.sandbox.coordination_leases(db.namespace) == []


@proves(
    fault="a second rotation of the same database while one is running",
    where="a concurrent flow run (another thread)",
    outcome="refused at once naming the holder's flow run; the first completes unharmed",
)
def test_a_second_concurrent_rotation_of_the_same_database_is_refused_naming_the_holder(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    first_outcome: list[object] = []
    first = threading.Thread(
        target=lambda: first_outcome.append(rotate_mssql_auth(namespace=db.namespace, database=db.name))
    )
    first.start()
    try:
        db.sandbox.wait_for(
            lambda: db.sandbox.coordination_leases(db.namespace) != [], "the first run's lock"
        )
        with pytest.raises(RotationInProgress, match="already being rotated by prefect-flow-run/"):
            rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        first.join(timeout=120)
    assert first_outcome and first_outcome[0].outcome == "Successful"  # type: ignore[attr-defined]
    new = db.secret_data()["password"]
    assert all(logs_in(db, pod, new) for pod in db.pods)


def test_a_rotation_with_nothing_to_do_ends_in_a_skipped_state_saying_why(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=1)  # its credentials are brand new
    original = db.secret_data()["password"]

    state = rotate_mssql_auth(namespace=db.namespace, database=db.name, max_age="30d", return_state=True)

    assert state.is_completed() and state.name == "Skipped"
    assert state.message is not None and state.message.startswith(
        "Nothing to do: not due: credentials 0m old"
    )
    report = state.result()
    assert report.outcome == "Skipped"
    assert db.secret_data()["password"] == original
