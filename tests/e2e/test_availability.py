"""What an application of the database sees during a rotation (sandbox/load_client.py writes to the
primary every 100 ms), and the flow's two waits before the primary's restart: for the secondaries to
be synchronized, and for a mounted auth secret to reach the pods that mount it.

Bounds are generous on purpose: the figures are measured by benchmarks/availability.py; these tests
check what must hold whatever the machine's speed (no failed login for a mounted secret, a failover
to a secondary and never to the returning primary, nothing restarted while secondaries lag)."""

from __future__ import annotations

import pytest

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import StepTimeout
from sandbox.cluster import Database
from sandbox.load_client import LoadClient, Outcome, PasswordSource, summarize
from tasks.primary_restart import PROPAGATION_ENV
from tests.e2e.conftest import DatabaseFactory
from tests.support import terminated_pods

KUBELET_SYNC_S = 2.0  # the sandbox's delay before a mounted secret changes in a pod
FLOW_PROPAGATION_S = "4"  # the operator's bound on it (the flow's setting), above the platform's


def primary_of(db: Database) -> str:
    pods = db.sandbox.core.list_namespaced_pod(
        db.namespace, label_selector=f"app.kubernetes.io/instance={db.name}"
    )
    [primary] = [
        p.metadata.name for p in pods.items if (p.metadata.labels or {}).get("kubedb.com/role") == "primary"
    ]
    return str(primary)


def mounting_pod(db: Database) -> None:
    """An application pod that mounts the auth secret (its image is not emulated: it stays Pending;
    the load client plays its container). The flow finds it and waits for the kubelet's sync."""
    db.sandbox.core.create_namespaced_pod(
        db.namespace,
        {
            "metadata": {"name": f"{db.name}-app"},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "registry.example/app:1.0",
                        "volumeMounts": [{"name": "db", "mountPath": "/etc/db"}],
                    }
                ],
                "volumes": [{"name": "db", "secret": {"secretName": f"{db.name}-auth"}}],
            },
        },
    )


def test_an_application_that_mounts_the_secret_never_fails_a_login_and_writes_on_through_a_failover(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_database(replicas=3)
    monkeypatch.setenv(PROPAGATION_ENV, FLOW_PROPAGATION_S)
    mounting_pod(db)
    mounted = LoadClient(db.sandbox.api, db.namespace, db.name, propagation_delay=KUBELET_SYNC_S)
    env = LoadClient(db.sandbox.api, db.namespace, db.name, source=PasswordSource.AT_START)
    with mounted, env:
        mounted.wait_for_writes(5)
        env.wait_for_writes(5)
        start = mounted.samples[-1].at
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
        mounted.wait_for_writes(5)  # writing through the new primary, with the new password
        end = mounted.samples[-1].at
    assert report.outcome == "Successful"
    assert terminated_pods(db)[-1] == f"{db.name}-0"  # the primary went last
    seen = summarize(mounted.samples, start, end)
    assert seen.failed_logins == 0, seen  # it had the new password before it had to log in again
    assert seen.writes > 0 and seen.longest_gap_s < 15.0, seen
    assert seen.no_primary_s < 10.0, seen
    # An application that read the password at start cannot log in once its connection is gone:
    # that is what restarting its workload is for (test_restart_workloads.py).
    after = summarize(env.samples, start, env.samples[-1].at)
    assert after.failed_logins > 0 and env.samples[-1].outcome is Outcome.LOGIN_REJECTED, after


def test_the_primary_fails_over_to_a_synchronized_secondary_not_back_to_itself(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restarted secondaries take a while to catch up; the primary waits for them. Without that
    wait, no secondary could take over and the old primary, back first, would be primary again."""
    db = make_database(replicas=3)
    monkeypatch.setattr(db.sandbox.settings, "secondary_catch_up", 3.0)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    types = [c.type for c in report.conditions]
    assert types.index("SecondariesSynchronized") < types.index(f"EvictPod--{db.name}-0")
    assert primary_of(db) == f"{db.name}-1"  # the lowest-ordinal synchronized secondary took over


def test_secondaries_that_never_synchronize_leave_the_primary_running_and_the_database_resumed(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_database(replicas=2)
    monkeypatch.setattr(db.sandbox.settings, "secondary_catch_up", 3600.0)

    with pytest.raises(StepTimeout) as failure:
        rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="10s")

    message = str(failure.value)
    assert f"secondaries {db.name}-1 were not synchronized" in message
    assert "run the rotation again" in message
    assert terminated_pods(db) == [f"{db.name}-1"]  # the primary was never restarted
    assert primary_of(db) == f"{db.name}-0"
    conditions = (db.get().get("status") or {}).get("conditions") or []
    assert not any(c["type"] == "Paused" for c in conditions), conditions  # resumed in the finally


def test_without_a_pod_that_mounts_the_secret_the_flow_does_not_wait_for_propagation(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_database(replicas=1)
    monkeypatch.setenv(PROPAGATION_ENV, "3600")  # would exceed the step's timeout if it waited
    ref = {"secretKeyRef": {"name": f"{db.name}-auth", "key": "password"}}
    env = [{"name": "DB_PASSWORD", "valueFrom": ref}]
    container = {"name": "app", "image": "registry.example/app:1.0", "env": env}
    env_only = {"metadata": {"name": f"{db.name}-env-app"}, "spec": {"containers": [container]}}
    db.sandbox.core.create_namespaced_pod(db.namespace, env_only)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="20s")

    assert report.outcome == "Successful"
    [propagated] = [c for c in report.conditions if c.type == "SecretPropagated"]
    assert propagated.seconds < 10.0  # env readers are not waited for: their pods need a restart
