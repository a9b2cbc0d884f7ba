"""Bad inputs are answered with a clear error that names the object and what to do — before
anything changes: no Secret written, no pause, no lock, no pod touched, no SQL password changed."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from kubernetes import client

from flows.rotate_auth import rotate_mssql_auth
from sandbox.cluster import Database
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import create_basic_auth_secret, is_paused, logs_in


@dataclass(frozen=True)
class Snapshot:
    secrets: dict[str, str]  # name -> resourceVersion
    pods: dict[str, str]  # name -> uid
    database: str  # resourceVersion
    leases: list[str]


def snapshot(db: Database) -> Snapshot:
    core = db.sandbox.core
    return Snapshot(
        secrets={
            s.metadata.name: s.metadata.resource_version
            for s in core.list_namespaced_secret(db.namespace).items
        },
        pods={p.metadata.name: p.metadata.uid for p in core.list_namespaced_pod(db.namespace).items},
        database=db.get()["metadata"]["resourceVersion"],
        leases=db.sandbox.coordination_leases(db.namespace),
    )


def put_secret(db: Database, name: str, *, type_: str = "kubernetes.io/basic-auth", **data: str) -> None:
    encoded = {
        key.replace("_", "."): base64.b64encode(value.encode()).decode() for key, value in data.items()
    }
    db.sandbox.core.create_namespaced_secret(
        db.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), type=type_, data=encoded)
    )


def drop_password_key(db: Database) -> None:
    db.sandbox.core.patch_namespaced_secret(
        f"{db.name}-auth", db.namespace, [{"op": "remove", "path": "/data/password"}]
    )


def point_at_missing_auth_secret(db: Database) -> None:
    db.sandbox.custom.patch_namespaced_custom_object(
        "kubedb.com",
        "v1alpha2",
        db.namespace,
        "mssqlservers",
        db.name,
        {"spec": {"authSecret": {"name": "gone"}}},
    )


def rotate(db: Database, overrides: dict[str, str]) -> object:
    parameters = {"namespace": db.namespace, "database": db.name, **overrides}
    return rotate_mssql_auth(**parameters)  # type: ignore[call-overload]


Setup = Callable[[Database], None]
# (case, setup, parameters for the flow, the error's message must match)
CASES: list[tuple[str, Setup, dict[str, str], str]] = [
    (
        "missing namespace",
        lambda db: None,
        {"namespace": "no-such-ns"},
        "no-such-ns/.* does not exist: check",
    ),
    ("missing database", lambda db: None, {"database": "no-such-db"}, "/no-such-db does not exist: check"),
    (
        "user secret missing",
        lambda db: None,
        {"auth_secret": "absent"},
        r"Secret .*/absent \(the new auth secret\) does not exist",
    ),
    (
        "user secret of the wrong type",
        lambda db: put_secret(
            db, "typed", type_="example.com/api-token", username="sa", password="Valid-Passw0rd-1"
        ),
        {"auth_secret": "typed"},
        r"has type 'example.com/api-token'; it must be kubernetes.io/basic-auth \(or Opaque\)",
    ),
    (
        "user secret without a password",
        lambda db: put_secret(db, "no-password", username="sa"),
        {"auth_secret": "no-password"},
        "has no 'password' key",
    ),
    (
        "user secret with another username",
        lambda db: create_basic_auth_secret(db, "other-user", "admin", "Valid-Passw0rd-2"),
        {"auth_secret": "other-user"},
        "database username cannot be changed",
    ),
    (
        "user secret whose password fails SQL Server's policy",
        lambda db: create_basic_auth_secret(db, "weak", "sa", "alllowercase"),
        {"auth_secret": "weak"},
        "SQL Server would refuse its password: it needs characters of at least three kinds",
    ),
    (
        "auth secret missing",
        point_at_missing_auth_secret,
        {},
        r"Secret .*/gone \(the database's auth secret\) does",
    ),
    ("auth secret without a password", drop_password_key, {}, "has no 'password' key: add the password"),
]


@proves(
    fault="bad inputs: missing namespace or database; user secret missing, not basic-auth, without password, "
    "with another username, or with a password SQL Server's policy refuses; auth secret missing or "
    "without password",
    where="the flow's parameters and the objects they name",
    outcome="a clear error naming the object and what to do, before anything changes (no secret "
    "written, no pause, no lock, no restart, old password still works)",
)
@pytest.mark.parametrize(("case", "setup", "parameters", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_clearly_before_anything_changes(
    make_database: DatabaseFactory, case: str, setup: Setup, parameters: dict[str, str], message: str
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    setup(db)
    before = snapshot(db)

    with pytest.raises(Exception, match=message):
        rotate(db, parameters)

    assert snapshot(db) == before, case
    assert not is_paused(db)
    assert all(logs_in(db, pod, original) for pod in db.pods)


@proves(
    fault="malformed parameters: timeout '5 minutes', '0s' or '1ms', apply 'Sometimes', tls_verify 'Off', "
    "names with capitals",
    where="the flow's parameters (called directly; deployments reject them on the server too)",
    outcome="Prefect's parameter validation refuses the run before any step runs",
)
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"timeout": "5 minutes"}, "timeout: String should match pattern"),
        ({"timeout": "0s"}, "timeout '0s' must be longer than zero"),
        (
            {"timeout": "1ms"},
            "timeout '1ms' is too short: a step (a pod restart, an election) needs at least 10s",
        ),
        (
            {"tls_verify": "Off"},
            "tls_verify: Input should be 'VerifyFull', 'VerifyCA' or 'TrustServerCertificate'",
        ),
        ({"apply": "Sometimes"}, "apply: Input should be 'IfReady' or 'Always'"),
        ({"database": "Not_A_Name"}, "database: String should match pattern"),
    ],
    ids=[
        "timeout-words",
        "timeout-zero",
        "timeout-too-short",
        "apply-unknown",
        "tls-unknown",
        "database-invalid",
    ],
)
def test_malformed_parameters_are_refused_before_any_step(
    make_database: DatabaseFactory, parameters: dict[str, str], message: str
) -> None:
    db = make_database(replicas=1)
    before = snapshot(db)

    with pytest.raises(Exception, match=re.escape(message)):
        rotate(db, parameters)

    assert snapshot(db) == before
