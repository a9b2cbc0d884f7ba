"""The flow against the sandbox at its strictest: KubeDB as its public code and docs describe it.

Foreign pauses and KubeDB ops requests, a pause removed mid-rotation, a primary that moves, an
arbiter, new pod IPs, Opaque and externally managed secrets, PodDisruptionBudgets, IPv6, and a
provisioner without the pause handshake. docs/kubedb-fidelity.md explains each behaviour and its source.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import InvalidRequest, PauseLost, StepTimeout
from rotation.report import RotationReport
from sandbox.cluster import Database, Sandbox, Settings
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import (
    assert_rotated,
    assert_untouched,
    create_basic_auth_secret,
    event_reasons,
    is_paused,
    logs_in,
    terminated_pods,
)

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"


def _patch_status(db: Database, conditions: list[dict[str, Any]]) -> None:
    db.sandbox.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"status": {"conditions": conditions}}
    )


def _patch_auth_secret_spec(db: Database, auth_secret: dict[str, Any]) -> None:
    db.sandbox.custom.patch_namespaced_custom_object(
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"spec": {"authSecret": auth_secret}}
    )


def _roles(db: Database) -> dict[str, str]:
    pods = db.sandbox.core.list_namespaced_pod(
        db.namespace, label_selector=f"app.kubernetes.io/instance={db.name}"
    ).items
    return {p.metadata.name: (p.metadata.labels or {}).get("kubedb.com/role", "") for p in pods}


def _restarts(db: Database) -> list[tuple[str, str]]:
    """(pod, role it had when it went down), in order; a held pod's second stop (the test deleting its
    broken replacement, see restart_held) is one restart."""
    downs: list[tuple[str, str]] = []
    for entry in db.timeline():
        if entry.kind == "pod-terminating" and not (downs and downs[-1][0] == entry.name):
            downs.append((entry.name, entry.detail))
    return downs


class _Run:
    """A rotation on a thread of its own, so a test can act on the cluster while it runs."""

    def __init__(self, **parameters: Any) -> None:
        self.report: RotationReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, kwargs=parameters, daemon=True)
        self._thread.start()

    def _run(self, **parameters: Any) -> None:
        try:
            self.report = rotate_mssql_auth(**parameters)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the rotation did not end"


@contextlib.contextmanager
def restart_held(db: Database, pod: str) -> Iterator[Callable[[], None]]:
    """The pod's next container fails to start, so the rotation waits in CheckPodRunning--<pod>
    until the test calls ``release()`` (the pod is then recreated healthy, as an operator would)."""
    core = db.sandbox.core
    before = core.read_namespaced_pod(pod, db.namespace).metadata.uid
    db.sandbox.fail_pod_starts(db.namespace, pod)

    def stuck() -> bool:
        try:
            now = core.read_namespaced_pod(pod, db.namespace)
        except Exception:
            return False
        return now.metadata.uid != before and now.metadata.deletion_timestamp is None

    def release() -> None:
        db.sandbox.wait_for(stuck, f"{pod} recreated and held", timeout=60)
        db.sandbox.fail_pod_starts(db.namespace, pod, failing=False)
        core.delete_namespaced_pod(pod, db.namespace)

    try:
        yield release
    finally:
        db.sandbox.fail_pod_starts(db.namespace, pod, failing=False)


# --- somebody else is working on the database ---------------------------------------------------


@proves(
    fault="a Paused condition of another operation, acknowledged (True) or only requested (Unknown)",
    where="the MSSQLServer's status, before the rotation starts",
    outcome="refused naming the other operation; its pause kept as it was; nothing written, locked or "
    "restarted",
)
@pytest.mark.parametrize("status", ["True", "Unknown"])
def test_a_pause_of_another_operation_means_busy_whether_requested_or_in_effect(
    make_database: DatabaseFactory, status: str
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    theirs = {
        "type": "Paused",
        "status": status,
        "reason": "Paused",
        "message": "MSSQLServerOpsRequest msops-restart is in process",
    }
    db.sandbox.settings.pause_handshake = False  # keep an Unknown pause Unknown
    try:
        _patch_status(db, [*(db.get()["status"].get("conditions") or []), theirs])
        with pytest.raises(InvalidRequest, match="paused by another operation: MSSQLServerOpsRequest msops"):
            rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        db.sandbox.settings.pause_handshake = True
    paused = [c for c in db.get()["status"]["conditions"] if c["type"] == "Paused"]
    assert [(c["status"], c["message"]) for c in paused] == [(status, theirs["message"])]
    assert terminated_pods(db) == []
    assert db.secret_data()["password"] == original and "password.next" not in db.secret_data()
    assert db.sandbox.coordination_leases(db.namespace) == []


@proves(
    fault="a KubeDB MSSQLServerOpsRequest of the database is Progressing",
    where="ops.kubedb.com MSSQLServerOpsRequests of the namespace",
    outcome="refused naming the request; nothing changed",
)
def test_a_kubedb_ops_request_in_progress_is_waited_for_not_raced(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    request = db.sandbox.create_ops_request(db.namespace, db.name, "Restart")
    db.sandbox.set_ops_request_phase(db.namespace, request, "Progressing")

    with pytest.raises(InvalidRequest, match=f"in progress: {request} \\(Restart, Progressing\\)"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_untouched(db, original)


@proves(
    fault="an MSSQLServerOpsRequest of the database ends mid-rotation, and KubeDB's ops webhook removes "
    "every Paused condition (ours too)",
    where="while the first secondary restarts",
    outcome="no further pod is evicted; the run fails saying a re-run finishes; the re-run does",
)
def test_when_kubedb_removes_the_pause_mid_rotation_no_further_pod_is_evicted_and_a_rerun_finishes(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    first = f"{db.name}-1"
    other = db.sandbox.create_ops_request(db.namespace, db.name, "Reconfigure")
    db.sandbox.set_ops_request_phase(db.namespace, other, "Failed")  # ended before we start

    with restart_held(db, first) as release:
        run = _Run(namespace=db.namespace, database=db.name, timeout="60s")
        db.sandbox.wait_for(lambda: first in terminated_pods(db), f"{first} evicted", timeout=60)
        ended = db.sandbox.create_ops_request(db.namespace, db.name, "Restart")
        db.sandbox.set_ops_request_phase(db.namespace, ended, "Successful")  # the webhook resumes the db
        db.sandbox.wait_for(lambda: not is_paused(db), "every pause removed")
        release()
        run.join()

    assert isinstance(run.error, PauseLost), run.error
    assert "run the rotation again to finish" in str(run.error)
    assert [pod for pod, _ in _restarts(db)] == [first]  # and none after our pause was gone
    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    assert report.outcome == "Successful"
    assert_rotated(db, original)


# --- roles, arbiter, addresses -------------------------------------------------------------------


@proves(
    fault="the coordinator moves the primary to another replica while the pods restart",
    where="after the first secondary's restart",
    outcome="roles are read again before each eviction: the pod that is primary then goes last; "
    "exactly one primary at the end",
)
def test_the_restarts_follow_the_primary_when_it_moves(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    first, moved_to = f"{db.name}-1", f"{db.name}-2"

    with restart_held(db, first) as release:
        run = _Run(namespace=db.namespace, database=db.name, timeout="60s")
        db.sandbox.wait_for(lambda: first in terminated_pods(db), f"{first} evicted", timeout=60)
        db.sandbox.failover(db.namespace, db.name, moved_to)
        release()
        run.join()

    assert run.error is None, run.error
    assert run.report is not None and run.report.outcome == "Successful"
    downs = _restarts(db)
    assert [pod for pod, _ in downs] == [first, f"{db.name}-0", moved_to]
    assert [role for _, role in downs] == ["role=secondary", "role=secondary", "role=primary"]
    assert list(_roles(db).values()).count("primary") == 1
    assert_rotated(db, original)


@proves(
    fault="an availability group with an even replica count, so KubeDB adds an arbiter pod "
    "(<db>-arbiter-0, same labels, no SQL data)",
    where="the database's pods",
    outcome="the arbiter takes no SQL step, is not restarted and is not counted as a replica; "
    "the rotation completes",
)
@pytest.mark.parametrize("replicas", [2, 4])
def test_an_arbiter_is_neither_a_replica_nor_restarted(make_database: DatabaseFactory, replicas: int) -> None:
    db = make_database(replicas=replicas)
    original = db.secret_data()["password"]
    assert db.arbiter is not None

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    restarted = [c.type.removeprefix("EvictPod--") for c in report.conditions if c.type.startswith("Evict")]
    assert sorted(restarted) == db.pods
    assert db.arbiter not in terminated_pods(db)
    assert_rotated(db, original)


def test_every_restarted_pod_comes_back_with_a_new_ip_and_is_found_there(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    before = {pod: db.ip(pod) for pod in db.pods}

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    after = {pod: db.ip(pod) for pod in db.pods}
    assert all(after[pod] != before[pod] for pod in db.pods), (before, after)
    assert_rotated(db, original)


# --- secrets KubeDB accepts, and those it does not let us rotate -----------------------------------


def test_an_opaque_user_secret_is_accepted_as_kubedb_does(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    create_basic_auth_secret(db, "opaque-auth", "sa", "Opaque-Secret-42!", secret_type="Opaque")

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, auth_secret="opaque-auth")

    assert report.outcome == "Successful"
    spec = db.get()["spec"]["authSecret"]
    assert spec["name"] == "opaque-auth"
    secret = db.sandbox.core.read_namespaced_secret("opaque-auth", db.namespace)
    assert spec["activeFrom"] == secret.metadata.annotations["kubedb.com/auth-active-from"]
    assert_rotated(db, original)


def test_active_from_in_the_spec_equals_the_secrets_annotation_after_a_rotation(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=1)
    created = db.get()["spec"]["authSecret"]["activeFrom"]

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    secret = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace)
    annotation = secret.metadata.annotations["kubedb.com/auth-active-from"]
    assert annotation >= created
    # A generated password keeps the secret's name: the rotation writes no spec, KubeDB's provisioner
    # copies the annotation into spec.authSecret.activeFrom once the database is resumed.
    db.sandbox.wait_for(
        lambda: db.get()["spec"]["authSecret"]["activeFrom"] == annotation, "activeFrom = the annotation"
    )
    # KubeDB's metadata on its secret survives the rotation's writes.
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "kubedb.com"
    assert [o.kind for o in secret.metadata.owner_references] == ["MSSQLServer"]


@proves(
    fault="spec.authSecret.externallyManaged, or credentials in a virtual-secrets.dev store",
    where="the MSSQLServer's spec",
    outcome="refused saying why (the external owner would put the old password back / the store is "
    "not writable here); nothing changed",
)
@pytest.mark.parametrize(
    ("auth_secret", "message"),
    [
        ({"externallyManaged": True}, "externallyManaged: the secret's owner"),
        ({"apiGroup": "virtual-secrets.dev", "secretStoreName": "vault"}, "virtual secret, kept in .* vault"),
    ],
)
def test_secrets_managed_elsewhere_are_refused_saying_why(
    make_database: DatabaseFactory, auth_secret: dict[str, Any], message: str
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    _patch_auth_secret_spec(db, auth_secret)

    with pytest.raises(InvalidRequest, match=message):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert_untouched(db, original)


# --- disruption budgets ----------------------------------------------------------------------------


@proves(
    fault="a PodDisruptionBudget maxUnavailable 1 (readiness not tied to the password)",
    where="the real API server's eviction subresource, status computed by the real disruption controller",
    outcome="each eviction waits until the previous pod is back; the rotation completes; no pod deleted",
)
def test_a_disruption_budget_allowing_one_pod_away_is_honoured_without_deleting_any_pod(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3, pdb={"maxUnavailable": 1})
    original = db.secret_data()["password"]
    db.sandbox.settings.readiness_follows_password = False
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        db.sandbox.settings.readiness_follows_password = True

    assert report.outcome == "Successful"
    reasons = event_reasons(db)
    assert reasons.count("EvictPod") == 3 and "DeletePod" not in reasons
    assert_rotated(db, original)


@proves(
    fault="a PodDisruptionBudget that refuses every eviction (minAvailable = replicas)",
    where="the real API server's eviction subresource",
    outcome="asked again until the step's timeout, then fails naming the budget; no pod deleted; after "
    "the budget is relaxed a re-run finishes the restarts",
)
def test_a_disruption_budget_that_refuses_every_eviction_fails_naming_it_and_never_deletes_a_pod(
    sandbox: Sandbox, make_database: DatabaseFactory
) -> None:
    # Pods stay Ready through Set: the real API server lets a NotReady pod be evicted while the
    # budget's last status still counts it healthy (docs/kubedb-fidelity.md), which would make the
    # refusal below depend on how fast the (real) disruption controller recounts.
    sandbox.settings.readiness_follows_password = False
    try:
        db = make_database(replicas=3, pdb={"minAvailable": 3})
        original = db.secret_data()["password"]

        with pytest.raises(
            StepTimeout, match=f"refused for 10s by PodDisruptionBudget {db.namespace}/{db.name} "
        ):
            rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="10s")

        assert terminated_pods(db) == []
        assert "DeletePod" not in event_reasons(db)
        assert not is_paused(db)
        db.sandbox.set_pdb(db.namespace, db.name, {"maxUnavailable": 1})  # the operator relaxes it
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        sandbox.settings.readiness_follows_password = True
    assert report.outcome == "Successful"
    assert "DeletePod" not in event_reasons(db)
    assert_rotated(db, original)


# --- the pause handshake ---------------------------------------------------------------------------


def test_the_pause_waits_for_the_provisioners_acknowledgement(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    kinds = [e.kind for e in db.timeline()]
    assert kinds.index("paused") < kinds.index("secret-written")
    assert "PauseNotAcknowledged" not in event_reasons(db)


def test_a_provisioner_without_the_handshake_is_paused_without_its_acknowledgement(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    monkeypatch.setenv("MSSQL_AUTH_ROTATION_PAUSE_ACK_SECONDS", "1")
    db.sandbox.settings.pause_handshake = False
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        db.sandbox.settings.pause_handshake = True

    assert report.outcome == "Successful"
    assert "PauseNotAcknowledged" in event_reasons(db)
    writes = [e for e in db.timeline() if e.kind in ("secret-written", "pod-terminating")]
    assert writes and all(e.paused[db.name] for e in writes)
    assert_rotated(db, original)


# --- IPv6 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ipv6_sandbox() -> Iterator[Sandbox]:
    with Sandbox(Settings(ip_family="ipv6")) as running:
        yield running


def test_replicas_on_ipv6_addresses_are_rotated(ipv6_sandbox: Sandbox, sandbox: Sandbox) -> None:
    db = ipv6_sandbox.create_database(f"v6-{uuid.uuid4().hex[:8]}", "mssql-v6", replicas=3)
    original = db.secret_data()["password"]
    assert all(":" in db.ip(pod) for pod in db.pods)
    previous = os.environ["KUBECONFIG"]
    os.environ["KUBECONFIG"] = str(ipv6_sandbox.kubeconfig)
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        os.environ["KUBECONFIG"] = previous

    assert report.outcome == "Successful"
    assert all(logs_in(db, pod, db.secret_data()["password"]) for pod in db.pods)
    assert_rotated(db, original)
