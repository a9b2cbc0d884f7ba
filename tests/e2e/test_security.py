"""Security: passwords travel only inside verified TLS, and the defects a review found stay fixed.

Each test states the scenario it proves; docs/security.md links them to the threat model.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import DatabaseBusy, InvalidRequest, RotationError, RotationInProgress, TlsRefused
from rotation.operator_settings import ALLOW_TRUST_SERVER_CERTIFICATE
from rotation.params import TlsVerify
from sandbox.cluster import Database, Sandbox
from sandbox.faultproxy import FaultProxy
from sandbox.prefect_stack import PrefectStack
from tests.e2e.conftest import DatabaseFactory
from tests.e2e.test_deployments import wait_for_runs
from tests.fault_matrix import proves
from tests.support import (
    assert_rotated,
    assert_untouched,
    is_paused,
    logs_in,
    terminated_pods,
)

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"


def _logins(db: Database, pod: str) -> list[Any]:
    return list(db.instance(pod).logins)


def _every_login_and_batch_encrypted(db: Database) -> bool:
    return all(
        all(record.encrypted for record in db.instance(pod).logins)
        and all(record.encrypted for record in db.instance(pod).batches)
        for pod in db.pods
    )


def _artifact(db: Database) -> str:
    """The report of the database's latest rotation."""
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"rotate-auth-{db.namespace}-{db.name}"])
            )
        )
    return str(max(artifacts, key=lambda artifact: str(artifact.created)).data)


# --- TLS ---------------------------------------------------------------------------------------------


@proves(
    fault="none: a normal rotation, watched from each SQL instance",
    where="every login and batch the replicas received",
    outcome="all inside TLS, certificates verified against ca.crt of <db>-server-cert and the pod's DNS "
    "name; the report says so; one failed login per replica (the final proof the old password is gone)",
)
def test_every_login_and_statement_arrives_inside_verified_tls(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    before = {pod: len(_logins(db, pod)) for pod in db.pods}

    rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert _every_login_and_batch_encrypted(db)
    assert any(b.kind == "alter-login" for pod in db.pods for b in db.instance(pod).batches)
    for pod in db.pods:
        ours = _logins(db, pod)[before[pod] :]
        assert [r.accepted for r in ours].count(False) == 1, (pod, ours)
    assert f"verified against the CA in Secret {db.namespace}/{db.name}-server-cert (ca.crt)" in _artifact(db)
    assert_rotated(db, original)


@proves(
    fault="a replica serves a certificate from another CA, or one that names another host",
    where="the TLS handshake inside TDS PRELOGIN (sandbox serve_certificate)",
    outcome="refused with TlsRefused before any password is sent (the replica saw no LOGIN7 from the run); "
    "nothing changed",
)
@pytest.mark.parametrize(
    ("kind", "hint"), [("foreign-ca", "not issued by the CA"), ("wrong-name", "does not name")]
)
def test_a_certificate_that_does_not_verify_gets_no_password(
    make_database: DatabaseFactory, kind: str, hint: str
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    impostor = f"{db.name}-2"
    db.sandbox.serve_certificate(db.namespace, impostor, kind)
    logins_before = len(_logins(db, impostor))

    with pytest.raises(TlsRefused, match=f"{impostor} .* so nothing was sent to it .*{hint}"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert len(_logins(db, impostor)) == logins_before  # the handshake failed before LOGIN7
    db.sandbox.serve_certificate(db.namespace, impostor, "kubedb")
    assert_untouched(db, original)


def test_a_certificate_for_another_name_passes_when_only_the_ca_is_checked(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=1)
    db.sandbox.serve_certificate(db.namespace, f"{db.name}-0", "wrong-name")
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name, tls_verify=TlsVerify.VERIFY_CA)
    finally:
        db.sandbox.serve_certificate(db.namespace, f"{db.name}-0", "kubedb")
    assert report.outcome == "Successful" and report.tls is not None and "names not checked" in report.tls


def test_a_database_that_forces_encryption_is_rotated(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3, client_tls=True)
    original = db.secret_data()["password"]

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful" and _every_login_and_batch_encrypted(db)
    assert_rotated(db, original)


@proves(
    fault="a database without spec.tls (its SQL Server has a self-signed certificate)",
    where="the MSSQLServer's spec",
    outcome="refused before any connection, naming tls_ca_secret and TrustServerCertificate; with "
    "TrustServerCertificate (explicit) it is rotated encrypted and the report says NOT verified",
)
def test_without_a_ca_to_trust_the_run_fails_closed_unless_told_to_trust_the_server(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_TRUST_SERVER_CERTIFICATE, "true")  # the operator allows the choice
    db = make_database(replicas=1, tls=False)
    original = db.secret_data()["password"]

    with pytest.raises(
        InvalidRequest, match=r"has no spec.tls, so there is no CA .*tls_ca_secret.*TrustServerCertificate"
    ):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)
    assert_untouched(db, original)

    report = rotate_mssql_auth(
        namespace=db.namespace, database=db.name, tls_verify=TlsVerify.TRUST_SERVER_CERTIFICATE
    )
    assert report.outcome == "Successful" and _every_login_and_batch_encrypted(db)
    assert "NOT verified (tls_verify=TrustServerCertificate)" in _artifact(db)
    assert_rotated(db, original)


@proves(
    fault="a run asks for tls_verify=TrustServerCertificate where the operator has not allowed it "
    "(unset, false, or a value other than true)",
    where="the run's parameters (whoever reaches the Prefect API picks them)",
    outcome="refused before any SQL Server connection or Kubernetes read of its objects, naming "
    "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE and where an operator sets it; nothing changes",
)
@pytest.mark.parametrize("setting", [None, "false", "yes"])
def test_trusting_any_certificate_is_refused_unless_the_operator_allows_it(
    make_database: DatabaseFactory,
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
) -> None:
    db = make_database(replicas=1)  # spec.tls: the choice would otherwise connect, unverified
    original = db.secret_data()["password"]
    logins = {pod: len(_logins(db, pod)) for pod in db.pods}
    if setting is None:
        monkeypatch.delenv(ALLOW_TRUST_SERVER_CERTIFICATE, raising=False)
    else:
        monkeypatch.setenv(ALLOW_TRUST_SERVER_CERTIFICATE, setting)

    with pytest.raises(InvalidRequest) as refused:
        rotate_mssql_auth(
            namespace=db.namespace, database=db.name, tls_verify=TlsVerify.TRUST_SERVER_CERTIFICATE
        )

    message = str(refused.value)
    assert message.startswith(f"MSSQLServer {db.namespace}/{db.name}: tls_verify=TrustServerCertificate")
    assert f"{ALLOW_TRUST_SERVER_CERTIFICATE}=true in the environment of the worker" in message
    # Only the failure's report (the MSSQLServer read for its Warning Event) reached the API server.
    assert proxy.hits("*", r"/(secrets|pods|leases|petsets|mssqlserveropsrequests)\b") == 0
    assert proxy.hits("PATCH", "/") == proxy.hits("PUT", "/") == 0
    assert {pod: len(_logins(db, pod)) for pod in db.pods} == logins
    assert_untouched(db, original)


@proves(
    fault="a user of the Prefect API starts the manual deployment with tls_verify=TrustServerCertificate; "
    "the worker's operator has not allowed it",
    where="the Prefect REST API (POST /deployments/{id}/create_flow_run) and the worker",
    outcome="the run fails in inspect-database naming the operator's setting; no replica saw a login, "
    "nothing changed",
)
def test_an_api_user_cannot_switch_certificate_checks_off(
    stack: PrefectStack, make_database: DatabaseFactory
) -> None:
    assert stack.env()[ALLOW_TRUST_SERVER_CERTIFICATE] == "false"  # the worker's environment
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    logins = {pod: len(_logins(db, pod)) for pod in db.pods}
    [manual] = [d for d in stack.api("POST", "/deployments/filter", {}) if d["name"] == "manual"]
    parameters = {"namespace": db.namespace, "database": db.name, "tls_verify": "TrustServerCertificate"}

    run = stack.api("POST", f"/deployments/{manual['id']}/create_flow_run", {"parameters": parameters})
    [ended] = wait_for_runs(stack, [run["id"]]).values()

    assert ended["state_type"] == "FAILED"
    assert ALLOW_TRUST_SERVER_CERTIFICATE in ended["state"]["message"], ended["state"]["message"]
    assert {pod: len(_logins(db, pod)) for pod in db.pods} == logins
    assert_untouched(db, original)


def test_a_ca_bundle_the_user_names_is_what_is_trusted(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)
    core = db.sandbox.core
    ca = core.read_namespaced_secret(f"{db.name}-server-cert", db.namespace).data["ca.crt"]
    core.create_namespaced_secret(
        db.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="corp-ca"), data={"ca.crt": ca})
    )
    other = make_database(replicas=1)  # a CA that did not issue db's certificates
    foreign_ca = core.read_namespaced_secret(f"{other.name}-server-cert", other.namespace).data["ca.crt"]
    core.create_namespaced_secret(
        db.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="wrong-ca"), data={"ca.crt": foreign_ca}),
    )

    with pytest.raises(TlsRefused, match=f"not issued by the CA in Secret {db.namespace}/wrong-ca"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name, tls_ca_secret="wrong-ca")
    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, tls_ca_secret="corp-ca")
    assert report.tls is not None and f"Secret {db.namespace}/corp-ca" in report.tls


# --- defects a review found ---------------------------------------------------------------------------


@proves(
    fault="a run finished (rotated, resumed) but could not release its Lease, which then lapsed",
    where="the Lease <db>-rotate-auth, left behind with the run's name, which is also on the secret",
    outcome="the next run rotates (it is not a silent no-op reported as Successful)",
)
def test_a_lapsed_lease_of_a_finished_run_does_not_turn_the_next_rotation_into_a_no_op(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSQL_AUTH_ROTATION_LEASE_SECONDS", "3")  # the lease is watched this long
    db = make_database(replicas=1)
    rotate_mssql_auth(namespace=db.namespace, database=db.name)
    rotated = db.secret_data()["password"]
    secret = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace)
    finished_run = secret.metadata.annotations["mssql-auth-rotation.kubedb.com/rotated-by"]
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    # As if its release had not happened: the Lease (which stays, released) still names that run.
    leases = client.CoordinationV1Api(db.sandbox.api)
    lease = leases.read_namespaced_lease(f"{db.name}-rotate-auth", db.namespace)
    lease.spec = client.V1LeaseSpec(
        holder_identity=finished_run, lease_duration_seconds=3, acquire_time=long_ago, renew_time=long_ago
    )
    leases.replace_namespaced_lease(lease.metadata.name, db.namespace, lease)

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert report.outcome == "Successful"
    assert db.secret_data()["password"] != rotated
    assert_rotated(db, rotated)


@proves(
    fault="another operation pauses the database after Inspect, before the run pauses it",
    where="the MSSQLServer's status, set while the run's lock is being taken (a 2 s delay, fault proxy)",
    outcome="refused with DatabaseBusy naming it; the other pause is kept, never overwritten; "
    "nothing changed",
)
def test_a_pause_set_after_inspect_is_refused_not_overwritten(
    make_database: DatabaseFactory, proxy: FaultProxy
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    leases = f"/namespaces/{db.namespace}/leases$"
    proxy.add_fault("POST", leases, times=1, delay=2.0)
    theirs = {
        "type": "Paused",
        "status": "True",
        "reason": "Paused",
        "message": "MSSQLServerOpsRequest x is in process",
    }

    def pause_while_the_lock_is_taken() -> None:
        db.sandbox.wait_for(lambda: proxy.hits("POST", leases) == 1, "the run to ask for its lock")
        db.sandbox.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, db.namespace, PLURAL, db.name, {"status": {"conditions": [theirs]}}
        )

    pauser = threading.Thread(target=pause_while_the_lock_is_taken)
    pauser.start()
    with pytest.raises(
        DatabaseBusy, match="paused by another operation after it was inspected: MSSQLServerOpsRequest x"
    ):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)
    pauser.join()

    paused = [c for c in db.get()["status"]["conditions"] if c["type"] == "Paused"]
    assert [{key: c.get(key) for key in theirs} for c in paused] == [theirs]
    assert db.secret_data()["password"] == original and terminated_pods(db) == []
    assert db.sandbox.coordination_leases(db.namespace) == []


@pytest.fixture
def skewed_holder(make_database: DatabaseFactory) -> Iterator[tuple[Database, threading.Event]]:
    """A database whose Lease is held by a live run whose clock is 31 s behind ours: it renews every
    second, writing renewTime by its own (late) clock."""
    db = make_database(replicas=1)
    leases = client.CoordinationV1Api(db.sandbox.api)
    name, stop = f"{db.name}-rotate-auth", threading.Event()

    def skewed_now() -> dt.datetime:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)

    leases.create_namespaced_lease(
        db.namespace,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1LeaseSpec(
                holder_identity=f"local/{uuid.uuid4()}",
                lease_duration_seconds=30,
                acquire_time=skewed_now(),
                renew_time=skewed_now(),
            ),
        ),
    )

    def renew() -> None:
        while not stop.wait(1.0):
            lease = leases.read_namespaced_lease(name, db.namespace)
            lease.spec.renew_time = skewed_now()
            leases.replace_namespaced_lease(name, db.namespace, lease)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    yield db, stop
    stop.set()
    renewer.join(timeout=5)


@proves(
    fault="the lock's holder is alive but its clock is 31 s behind (its renewTime looks expired)",
    where="the Lease <db>-rotate-auth, renewed every second by another process",
    outcome="the run watches the lease by its own clock, sees it renewed, and is refused; nothing changed",
)
def test_a_live_holder_with_a_slow_clock_keeps_its_lock(
    skewed_holder: tuple[Database, threading.Event],
) -> None:
    db, _ = skewed_holder
    original = db.secret_data()["password"]

    with pytest.raises(RotationInProgress, match="already being rotated by local/"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert db.secret_data()["password"] == original and not is_paused(db)


@proves(
    fault="the run's lock is taken over while the run waits for a pod to come back",
    where="the Lease, replaced during CheckPodRunning (the pod is held down)",
    outcome="the wait notices within seconds and the run stops with 'lost its lock', long before its timeout",
)
def test_a_run_waiting_in_a_long_step_notices_at_once_that_it_lost_its_lock(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSQL_AUTH_ROTATION_LEASE_SECONDS", "3")
    db = make_database(replicas=3)
    first = f"{db.name}-1"
    db.sandbox.fail_pod_starts(db.namespace, first)  # the run will wait for it for its whole timeout
    failures: list[BaseException] = []

    def rotate() -> None:
        try:
            rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="5m")
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=rotate)
    try:
        runner.start()
        db.sandbox.wait_for(lambda: first in terminated_pods(db), f"{first} evicted", timeout=60)
        leases = client.CoordinationV1Api(db.sandbox.api)
        lease = leases.read_namespaced_lease(f"{db.name}-rotate-auth", db.namespace)
        lease.spec.holder_identity = "someone-else"
        leases.replace_namespaced_lease(lease.metadata.name, db.namespace, lease)
        runner.join(timeout=30)  # far less than the 5 minutes the wait would otherwise last
        assert not runner.is_alive(), "the run kept waiting after losing its lock"
    finally:
        db.sandbox.fail_pod_starts(db.namespace, first, failing=False)
    assert len(failures) == 1 and "lost its lock (now held by someone-else)" in str(failures[0])


@proves(
    fault="a lease renewal goes through but its response is lost, so the client re-sends it and gets 409",
    where="Kubernetes API: the PUT of the Lease (fault proxy: forwarded, response dropped)",
    outcome="the keeper reads the lease again, finds it still its own, renews on; the rotation completes",
)
def test_a_re_sent_renewal_that_conflicts_does_not_lose_the_lock(
    make_database: DatabaseFactory, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewed every 2 s: several renewals during the rotation, and a 4 s deadline that a loaded machine
    # meets (a 3 s lease must be renewed within 2 s, re-sends included).
    monkeypatch.setenv("MSSQL_AUTH_ROTATION_LEASE_SECONDS", "6")
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    for pod in db.pods:
        db.instance(pod).faults.reply_delay = 0.05  # a few renewals happen during the rotation
    proxy.add_fault("PUT", f"/namespaces/{db.namespace}/leases/", times=2, drop_response=True)
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        for pod in db.pods:
            db.instance(pod).faults.reply_delay = 0
    assert report.outcome == "Successful"
    assert proxy.hits("PUT", f"/namespaces/{db.namespace}/leases/") >= 3
    assert_rotated(db, original)


@proves(
    fault="a user secret that is already another database's auth secret",
    where="the flow's auth_secret parameter",
    outcome="refused naming the other database; nothing changed (the other's .prev is never overwritten)",
)
def test_a_user_secret_of_another_database_is_refused_naming_it(sandbox: Sandbox) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    db = sandbox.create_database(namespace, "orders", replicas=1)
    other = sandbox.create_database(namespace, "billing", replicas=1)
    original = db.secret_data()["password"]

    with pytest.raises(InvalidRequest, match=f"already the auth secret of MSSQLServer {namespace}/billing"):
        rotate_mssql_auth(namespace=namespace, database="orders", auth_secret=f"{other.name}-auth")

    assert_untouched(db, original)


@proves(
    fault="an empty auth_secret (a form's blank field)",
    where="the flow's parameters",
    outcome="a generated password, as the README says",
)
def test_an_empty_auth_secret_generates_a_password(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, auth_secret="")

    assert report.outcome == "Successful" and report.auth_secret == f"{db.name}-auth"
    assert_rotated(db, original)


@proves(
    fault="the API server answers 503 to five lists of the database's pods in a row (about 8 s with backoff)",
    where="Kubernetes API: GET .../pods with a label selector (Inspect; fault proxy)",
    outcome="retried with capped backoff until the step's timeout, not for a fixed ~4 s; "
    "the rotation completes",
)
def test_an_api_outage_longer_than_a_few_retries_is_waited_out(
    make_database: DatabaseFactory, proxy: FaultProxy
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    pods_path = f"/namespaces/{db.namespace}/pods$"
    proxy.add_fault("GET", pods_path, times=5, status=503, query_regex="labelSelector")

    report = rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="1m")

    assert report.outcome == "Successful"
    assert proxy.hits("GET", pods_path) >= 6  # the five refused and the one that went through
    assert_rotated(db, original)


@proves(
    fault="every watch of the pod ends at once, with no event",
    where="Kubernetes API: watches of the pod being restarted (fault proxy: an empty 200)",
    outcome="the wait backs off between them (a bounded number of requests) and completes when "
    "the pod is back",
)
def test_a_watch_that_ends_at_once_is_not_retried_in_a_tight_loop(
    make_database: DatabaseFactory, proxy: FaultProxy
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    pods_path = f"/namespaces/{db.namespace}/pods$"
    proxy.add_fault("GET", pods_path, times=1000, empty=True, query_regex="watch=true")
    usual, db.sandbox.settings.pod_start_delay = (
        db.sandbox.settings.pod_start_delay,
        2.0,
    )  # a few seconds' wait
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        db.sandbox.settings.pod_start_delay = usual

    assert report.outcome == "Successful"
    # Backing off (0.1 s doubling to 2 s) makes a handful of requests in those seconds; a tight loop
    # makes hundreds.
    assert proxy.hits("GET", pods_path) < 30
    assert_rotated(db, original)


@proves(
    fault="the gate fails (replica 1 ignores the change) and replica 0 becomes unreachable just as the "
    "rollback starts",
    where="replica 0's and replica 1's SQL Servers (sandbox TDS fault switches)",
    outcome="the rollback still restores replica 2, keeps password.next (a replica may still have it) and "
    "fails saying so; no pod restarted; once replica 0 is back a re-run finishes the rotation",
)
def test_a_rollback_tries_every_replica_and_keeps_the_staged_password_until_all_are_back(
    make_database: DatabaseFactory,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    unreachable, ignoring, last = db.pods
    db.instance(ignoring).faults.ignore_password_changes = True
    db.instance(unreachable).faults.fail_logins_after = 3  # Inspect, Set and Verify log in; then it is gone

    with pytest.raises(
        RotationError, match="the rollback could not confirm the old password on every replica"
    ):
        rotate_mssql_auth(namespace=db.namespace, database=db.name, timeout="10s")

    staged = db.secret_data()
    assert staged["password"] == original and "password.next" in staged
    assert logs_in(db, last, original)  # restored, although the replica before it failed
    assert terminated_pods(db) == [] and not is_paused(db)
    db.instance(unreachable).faults.fail_logins_after = None
    db.instance(ignoring).faults.ignore_password_changes = False
    report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
    assert report.outcome == "Successful"
    assert_rotated(db, original)
