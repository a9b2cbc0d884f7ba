"""After a successful rotation, the workloads that use the database's credentials are restarted as
``kubectl rollout restart`` does: Deployments annotated ``secret.reloader.stakater.com/reload`` with the
auth secret, and those the run lists (``restart_workloads``). Never before success, never after a
failure or a skipped run; a workload the identity may not restart is reported and the rotation still
succeeds.

Real clients and the sandbox's real Deployment controller: a restart is seen as the new ReplicaSet it
makes. The Deployments run an image that is not the project's, so their pods stay Pending (the
sandbox's kubelet emulates only the project's image): the rollout is what is checked, not the pods.
"""

from __future__ import annotations

import logging
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from flows.rotate_auth import rotate_mssql_auth
from rotation import rbac
from rotation.__main__ import main as rotation_cli
from rotation.errors import InvalidRequest, VerificationFailed
from rotation.kube import Kube
from rotation.report import RotationReport
from rotation.workloads import (
    RELOAD_ANNOTATION,
    RESTARTED_AT_ANNOTATION,
    Outcome,
    Why,
    WorkloadKind,
    WorkloadRef,
    restart_patch,
)
from sandbox.cluster import Database, Sandbox
from sandbox.faultproxy import FaultProxy
from tasks.lock import LEASE_SECONDS_ENV
from tests.e2e.conftest import DatabaseFactory
from tests.e2e.test_crashes import CHILD_LEASE_SECONDS, report_the_dead_run_as_crashed, run_until_killed
from tests.e2e.test_rbac import create, wait_for_grant
from tests.support import assert_rotated, assert_untouched, event_reasons, is_paused, task_run_log

FOREIGN_IMAGE = "registry.example/app:1.0"  # not the project's image: its pods stay Pending
EVENT_REASON = "RestartWorkloads"
DEPLOYMENT = WorkloadKind.DEPLOYMENT


# -- helpers -----------------------------------------------------------------------------------------
def apps(db: Database) -> client.AppsV1Api:
    return client.AppsV1Api(db.sandbox.api)


def make_deployment(db: Database, name: str, reload: str | None = None) -> None:
    """A one-replica Deployment, annotated for stakater Reloader with ``reload`` if given; returns once
    the Deployment controller has made its first ReplicaSet."""
    labels = {"app": name}
    apps(db).create_namespaced_deployment(
        db.namespace,
        {
            "metadata": {"name": name, "annotations": {RELOAD_ANNOTATION: reload} if reload else {}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": FOREIGN_IMAGE}]},
                },
            },
        },
    )
    db.sandbox.wait_for(lambda: len(replica_sets(db, name)) == 1, f"the first ReplicaSet of {name}")


def replica_sets(db: Database, deployment: str) -> list[client.V1ReplicaSet]:
    return [
        rs
        for rs in apps(db).list_namespaced_replica_set(db.namespace).items
        if any(o.kind == "Deployment" and o.name == deployment for o in rs.metadata.owner_references or [])
    ]


def template_annotations(db: Database, deployment: str) -> dict[str, str]:
    read = apps(db).read_namespaced_deployment(deployment, db.namespace)
    return dict(read.spec.template.metadata.annotations or {})


def generation(db: Database, deployment: str) -> int:
    return int(apps(db).read_namespaced_deployment(deployment, db.namespace).metadata.generation)


def assert_restarted_once(db: Database, deployment: str) -> None:
    """The pod template carries kubectl's restartedAt, and the real Deployment controller rolls it out:
    a second ReplicaSet, whose pod template has that annotation."""
    restarted_at = template_annotations(db, deployment).get(RESTARTED_AT_ANNOTATION)
    assert restarted_at, f"{deployment}: no {RESTARTED_AT_ANNOTATION} in its pod template"
    db.sandbox.wait_for(lambda: len(replica_sets(db, deployment)) == 2, f"a new ReplicaSet of {deployment}")
    templates = [(rs.spec.template.metadata.annotations or {}) for rs in replica_sets(db, deployment)]
    assert sorted(t.get(RESTARTED_AT_ANNOTATION, "") for t in templates) == ["", restarted_at]
    assert generation(db, deployment) == 2  # one change of the spec: restarted once


def assert_untouched_deployment(db: Database, deployment: str) -> None:
    assert RESTARTED_AT_ANNOTATION not in template_annotations(db, deployment), deployment
    assert generation(db, deployment) == 1, deployment
    assert len(replica_sets(db, deployment)) == 1, deployment


def by_name(report: RotationReport) -> dict[str, Any]:
    assert all(w.kind is DEPLOYMENT for w in report.workloads), report.workloads
    return {w.name: w for w in report.workloads}


def events(db: Database, reason: str) -> list[client.CoreV1Event]:
    return [e for e in db.sandbox.core.list_namespaced_event(db.namespace).items if e.reason == reason]


class Warnings(logging.Handler):
    """The run log's warnings (Prefect's task-run logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    with task_run_log(handler := Warnings()):
        yield handler


# -- after a successful rotation ---------------------------------------------------------------------
def test_annotated_and_listed_deployments_are_restarted_after_the_rotation_and_no_other(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=1)
    old = db.secret_data()["password"]
    auth = f"{db.name}-auth"
    make_deployment(db, "annotated", reload=f" other-secret ,  {auth} ")  # Reloader's list, spaced
    make_deployment(db, "listed")
    make_deployment(db, "both", reload=auth)
    make_deployment(db, "other-secret", reload=f"{auth}-old,another")  # annotated, not with this secret
    make_deployment(db, "plain")

    report = rotate_mssql_auth(
        namespace=db.namespace, database=db.name, restart_workloads=["Deployment/listed", "deploy/both"]
    )

    assert report.outcome == "Successful"
    assert_rotated(db, old)
    restarts = by_name(report)
    assert set(restarts) == {"annotated", "listed", "both"}
    assert restarts["annotated"].why == [Why.ANNOTATION]
    assert restarts["listed"].why == [Why.PARAMETER]
    assert restarts["both"].why == [Why.ANNOTATION, Why.PARAMETER]  # once, for both reasons
    assert all(w.outcome is Outcome.RESTARTED for w in restarts.values()), restarts
    for name in ("annotated", "listed", "both"):
        assert_restarted_once(db, name)
    for name in ("other-secret", "plain"):
        assert_untouched_deployment(db, name)
    # The Event on the MSSQLServer, after the database was resumed: the rotation had succeeded.
    [event] = events(db, EVENT_REASON)
    assert (event.involved_object.kind, event.involved_object.name) == ("MSSQLServer", db.name)
    assert event.type == "Normal"
    assert event.message == (
        f"Restarted the workloads that use Secret {auth}: "
        "Deployment annotated, Deployment both, Deployment listed"
    )
    reasons = event_reasons(db)
    assert reasons.index("ResumeDatabase") < reasons.index(EVENT_REASON)
    on_workloads = {
        e.involved_object.name for e in events(db, "Restarted") if e.involved_object.kind == "Deployment"
    }
    assert on_workloads == {"annotated", "listed", "both"}
    assert "| Deployment both | annotation, parameter | restarted |" in report.markdown()


def test_a_workload_the_identity_may_not_restart_is_reported_and_the_rotation_still_succeeds(
    make_database: DatabaseFactory,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    warnings: Warnings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As a ServiceAccount whose Role (python -m rotation rbac) names only ``granted`` for restarts:
    the annotated ``denied`` is reported with the command that grants it."""
    db = make_database(replicas=1)
    old = db.secret_data()["password"]
    auth = f"{db.name}-auth"
    make_deployment(db, "denied", reload=auth)
    make_deployment(db, "granted")
    account = f"rotation-{uuid.uuid4().hex[:6]}"
    grant = rbac.grant(
        db.namespace, db.name, 1, service_account=account, restart_workloads=["deployment/granted"]
    )
    kubeconfig = sandbox.service_account_kubeconfig(rbac.IDENTITY, account)
    for doc in rbac.documents(grant):
        create(sandbox.api, doc)
    wait_for_grant(kubeconfig, lambda api: client.CoreV1Api(api).read_namespaced_secret(auth, db.namespace))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    report = rotate_mssql_auth(
        namespace=db.namespace, database=db.name, restart_workloads=["deployment/granted"]
    )

    assert report.outcome == "Successful"
    assert_rotated(db, old)
    restarts = by_name(report)
    assert restarts["granted"].outcome is Outcome.RESTARTED
    assert_restarted_once(db, "granted")
    denied = restarts["denied"]
    assert (denied.outcome, denied.why) == (Outcome.NOT_PERMITTED, [Why.ANNOTATION])
    assert_untouched_deployment(db, "denied")
    # The message names the grant to apply: it keeps "granted" (the Role is replaced as a whole).
    command = (
        f"python -m rotation rbac --namespace {db.namespace} --database {db.name} --replicas 1 "
        "--restart-workload deployment/denied --restart-workload deployment/granted"
    )
    assert (
        f"may not patch Deployment denied (403 Forbidden): to let rotations restart it, apply `{command} |"
        in (denied.message)
    )
    assert any(
        "did not restart Deployment denied (not-permitted)" in m and command in m for m in warnings.messages
    )
    [event] = events(db, EVENT_REASON)
    assert event.type == "Warning"
    assert f"Restarted the workloads that use Secret {auth}: Deployment granted" in event.message
    assert "not restarted: Deployment denied (not-permitted: " in event.message and command in event.message
    # That command prints a Role that lets the rotation restart both.
    capsys.readouterr()
    assert rotation_cli(shlex.split(command)[3:]) == 0
    role = next(yaml.safe_load_all(capsys.readouterr().out))
    patches = [r for r in role["rules"] if r["apiGroups"] == ["apps"] and r["verbs"] == ["patch"]]
    assert patches == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["denied", "granted"],
            "verbs": ["patch"],
        }
    ]


def test_an_interrupted_rotation_finished_by_the_next_run_restarts_the_workloads_then(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed right after the commit, the first run restarted nothing; the run that finishes the
    rotation and ends Successful restarts the annotated workload, once."""
    monkeypatch.setenv(LEASE_SECONDS_ENV, CHILD_LEASE_SECONDS)
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    make_deployment(db, "annotated", reload=f"{db.name}-auth")

    run_until_killed(db, "commit-secret")
    assert_untouched_deployment(db, "annotated")
    report_the_dead_run_as_crashed(db)
    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    assert_rotated(db, original)
    assert by_name(report)["annotated"].outcome is Outcome.RESTARTED
    assert_restarted_once(db, "annotated")


def test_transient_api_errors_are_retried_restarting_once_and_a_lasting_one_is_reported_not_fatal(
    make_database: DatabaseFactory, proxy: FaultProxy
) -> None:
    """Through the sandbox's fault proxy: a list answered 503 once; a patch answered 503 twice; a
    patch answered 503 for longer than the retries last. A retry sends the same time, so one that
    follows a patch which did go through (its answer lost) restarts nothing again: the API server
    leaves the Deployment as it is."""
    db = make_database(replicas=1)
    old = db.secret_data()["password"]
    auth = f"{db.name}-auth"
    for name in ("flaky", "down"):
        make_deployment(db, name, reload=auth)
    deployments = f"/apis/apps/v1/namespaces/{db.namespace}/deployments"
    proxy.add_fault("GET", f"{deployments}$", times=1, status=503)
    proxy.add_fault("PATCH", f"{deployments}/flaky$", times=2, status=503)
    proxy.add_fault("PATCH", f"{deployments}/down$", times=100, status=503)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    assert_rotated(db, old)
    restarts = by_name(report)
    assert restarts["flaky"].outcome is Outcome.RESTARTED, restarts["flaky"]
    assert_restarted_once(db, "flaky")
    assert proxy.hits("PATCH", f"{deployments}/flaky$") == 3
    restarted_at = template_annotations(db, "flaky")[RESTARTED_AT_ANNOTATION]
    Kube(db.namespace, db.sandbox.api).patch_workload(
        WorkloadRef(DEPLOYMENT, "flaky"), restart_patch(restarted_at)
    )
    assert generation(db, "flaky") == 2  # the same patch again: no change of the spec, no rollout
    down = restarts["down"]
    assert down.outcome is Outcome.FAILED and "503" in down.message, down
    assert proxy.hits("PATCH", f"{deployments}/down$") == 4  # the first try and three retries
    assert_untouched_deployment(db, "down")
    [event] = events(db, EVENT_REASON)
    assert event.type == "Warning" and "not restarted: Deployment down (failed: " in event.message


# -- never otherwise ---------------------------------------------------------------------------------
def test_a_failed_rotation_restarts_nothing(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    make_deployment(db, "annotated", reload=f"{db.name}-auth")
    make_deployment(db, "listed")
    db.instance(f"{db.name}-0").faults.ignore_password_changes = True

    with pytest.raises(VerificationFailed):
        rotate_mssql_auth(namespace=db.namespace, database=db.name, restart_workloads=["deployment/listed"])

    assert_untouched(db, original)
    for name in ("annotated", "listed"):
        assert_untouched_deployment(db, name)
    assert EVENT_REASON not in event_reasons(db)


def test_a_skipped_run_restarts_nothing(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)  # its credentials are brand new: not due
    make_deployment(db, "annotated", reload=f"{db.name}-auth")

    state = rotate_mssql_auth(
        namespace=db.namespace,
        database=db.name,
        max_age="30d",
        restart_workloads=["deployment/annotated"],
        return_state=True,
    )

    assert state.name == "Skipped"
    assert state.result().workloads == []
    assert_untouched_deployment(db, "annotated")
    assert EVENT_REASON not in event_reasons(db)


def test_a_bad_item_is_refused_naming_the_parameter_before_anything_changes(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    make_deployment(db, "app", reload=f"{db.name}-auth")

    with pytest.raises(InvalidRequest, match=r"restart_workloads: .*'cronjob/nightly' is not KIND/NAME"):
        rotate_mssql_auth(
            namespace=db.namespace, database=db.name, restart_workloads=["deployment/app", "cronjob/nightly"]
        )

    assert_untouched(db, original)
    assert not is_paused(db)
    assert_untouched_deployment(db, "app")
