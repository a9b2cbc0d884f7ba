"""TLS in the sandbox as KubeDB sets it up, seen through the official ``kubernetes`` client and the real
pymssql 2.4.6 (FreeTDS 1.5) over TCP; nothing is mocked.

Certificates are verified as docs/freetds-tls.md measured it: a freetds.conf named by FREETDSCONF,
one section per endpoint (``host``, ``port``, ``ca file``, ``certificate hostname``), and
``pymssql.connect(server=<section>, port=<port>, encryption="require")``. Those attempts run in a
fresh interpreter: the config stays private to the attempt, and pymssql reports the first server
error of a process again later. What the server saw comes from the instance's encryption record and
its clear-text wire record.

No password of the sandbox ever travels in clear text here: logins that deliberately go out in clear
text carry a made-up password no instance or Secret has, so the session's leak checks
(tests/e2e/test_no_leaks.py) are not disturbed.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymssql
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import Database, Sandbox
from sandbox.fleet import PodKey
from sandbox.sqlserver import Encryption, InstanceState, TlsMode
from sandbox.sqlserver.state import MAX_CLEAR_TEXT_CHARS, MAX_CLEAR_TEXT_TOTAL, MAX_RECORDS
from tests.support import closed_before_login, freetds_conf, logs_in, pymssql_attempt

Attempt = Callable[..., tuple[int, str] | None]


@pytest.fixture
def attempt(tmp_path: Path) -> Attempt:
    """tests.support.pymssql_attempt with an empty freetds.conf when ``conf`` is None."""
    empty = freetds_conf(tmp_path, {})

    def run(conf: Path | None, *args: Any, **options: Any) -> tuple[int, str] | None:
        return pymssql_attempt(conf or empty, *args, **options)

    return run


def secret_files(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, bytes]:
    secret = core.read_namespaced_secret(name, namespace)
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """(DNS names, IP addresses) of a certificate."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(names.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)
    }


def served(db: Database, pod: str) -> x509.Certificate:
    """The certificate the pod's SQL Server serves right now."""
    certificate = db.instance(pod).certificate
    assert certificate is not None
    return certificate.certificate


def issued_by(cert: x509.Certificate, ca_pem: bytes) -> bool:
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def pod_dns(db: Database, pod: str) -> str:
    return f"{pod}.{db.name}-pods.{db.namespace}.svc"


def write_ca(tmp_path: Path, db: Database) -> Path:
    """ca.crt of ``<db>-server-cert``, as a file FreeTDS can be pointed at."""
    path = tmp_path / f"{db.name}-ca.crt"
    path.write_bytes(secret_files(db.sandbox.core, db.namespace, f"{db.name}-server-cert")["ca.crt"])
    return path


def verifying(db: Database, pod: str, ca_file: Path, hostname: str | None = None) -> dict[str, str]:
    """A section that reaches the pod at its current address, trusts ``ca_file`` and checks
    ``hostname`` (default: the pod's DNS name)."""
    return {
        "host": db.ip(pod),
        "port": str(db.port(pod)),
        "ca file": str(ca_file),
        "check certificate hostname": "yes",
        "certificate hostname": hostname or pod_dns(db, pod),
    }


def idle(db: Database, pod: str) -> InstanceState:
    """The pod's instance once every connection to it has ended (its records are complete)."""
    assert db.sandbox.fleet.wait_idle(PodKey(db.namespace, pod), 5)
    return db.instance(pod)


def new_logins(state: InstanceState, since: int) -> list[int]:
    """Numbers of the connections after ``since`` whose LOGIN7 reached the server."""
    return [login.connection for login in state.logins if login.connection > since]


def last_connection(state: InstanceState) -> int:
    return max((c.connection for c in state.connections), default=0)


def restart(sandbox: Sandbox, db: Database, pod: str) -> str:
    """Delete the pod and wait until its replacement is Ready on a new IP; that IP."""
    core = sandbox.core
    before = core.read_namespaced_pod(pod, db.namespace)
    core.delete_namespaced_pod(pod, db.namespace)

    def replaced() -> bool:
        try:
            now = core.read_namespaced_pod(pod, db.namespace)
        except ApiException:
            return False
        conditions = now.status.conditions or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        return bool(now.metadata.uid != before.metadata.uid and ready and now.status.pod_ip)

    sandbox.wait_for(replaced, f"{pod} restarted and Ready")
    ip = str(core.read_namespaced_pod(pod, db.namespace).status.pod_ip)
    assert ip == db.ip(pod) != before.status.pod_ip
    return ip


def made_up_password() -> str:
    """A password that no instance and no Secret has: safe to send in clear text on purpose."""
    return f"Never-Used-{secrets.token_hex(8)}"


# --- what KubeDB creates -----------------------------------------------------------------------------


def test_a_database_gets_spec_tls_and_cert_manager_secrets_for_its_pods_and_services(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "ag", replicas=3)

    tls = db.get()["spec"]["tls"]
    assert tls["issuerRef"] == {"apiGroup": "cert-manager.io", "kind": "Issuer", "name": "ag-ca"}
    assert tls["clientTLS"] is False
    assert {(c["alias"], c["secretName"]) for c in tls["certificates"]} == {
        ("server", "ag-server-cert"),
        ("client", "ag-client-cert"),
    }
    server_secret = core.read_namespaced_secret("ag-server-cert", namespace)
    client_secret = core.read_namespaced_secret("ag-client-cert", namespace)
    for secret in (server_secret, client_secret):
        assert secret.type == "kubernetes.io/tls"
        assert set(secret.data) == {"ca.crt", "tls.crt", "tls.key"}
        assert secret.metadata.labels["app.kubernetes.io/instance"] == "ag"
        assert secret.metadata.annotations["cert-manager.io/issuer-name"] == "ag-ca"
    server = secret_files(core, namespace, "ag-server-cert")
    client_files = secret_files(core, namespace, "ag-client-cert")
    ca_pem = server["ca.crt"]
    assert client_files["ca.crt"] == ca_pem
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    server_cert = x509.load_pem_x509_certificate(server["tls.crt"])
    assert issued_by(server_cert, ca_pem)
    for files in (server, client_files):  # tls.key is the private key of tls.crt
        certificate_key = x509.load_pem_x509_certificate(files["tls.crt"]).public_key()
        assert load_pem_private_key(files["tls.key"], None).public_key() == certificate_key
    pods = [f"ag-{i}.ag-pods.{namespace}.svc" for i in range(3)]
    expected = {*pods, *(f"{name}.cluster.local" for name in pods), "ag", f"ag.{namespace}.svc"}
    assert sans(server_cert) == (expected, set())
    client_cert = x509.load_pem_x509_certificate(client_files["tls.crt"])
    assert issued_by(client_cert, ca_pem)
    assert client_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mssql"
    usage = client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    for pod in db.pods:  # each SQL Server: the database's CA, the pod's own names and current IP
        cert = served(db, pod)
        assert issued_by(cert, ca_pem), pod
        name = pod_dns(db, pod)
        assert sans(cert) == ({name, f"{name}.cluster.local"}, {db.ip(pod)}), pod
        assert not db.instance(pod).force_encryption, "clientTLS is false: encryption is not forced"


def test_a_database_without_spec_tls_has_no_certificate_secrets_and_serves_a_self_signed_certificate(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str, tmp_path: Path, attempt: Attempt
) -> None:
    plain = sandbox.create_database(namespace, "plain", replicas=1, tls=False)
    other = sandbox.create_database(namespace, "other", replicas=1)

    assert "tls" not in plain.get()["spec"]
    secrets_left = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
    assert not {"plain-server-cert", "plain-client-cert"} & secrets_left
    cert = served(plain, "plain-0")
    assert cert.issuer == cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SSL_Self_Signed_Fallback"
    assert sans(cert) == (set(), set())
    password = plain.secret_data()["password"]
    host, port = plain.ip("plain-0"), plain.port("plain-0")

    before = last_connection(plain.instance("plain-0"))
    assert attempt(None, host, port, password, ("SELECT 1",), encryption="require") is None  # encrypts
    state = idle(plain, "plain-0")
    assert [(c.reply, c.mode) for c in state.connections if c.connection > before] == [
        (Encryption.ON, TlsMode.FULL)
    ]
    # ... but no CA secret of the sandbox vouches for it.
    conf = freetds_conf(
        tmp_path, {"plain": {"host": host, "port": str(port), "ca file": str(write_ca(tmp_path, other))}}
    )
    refused = attempt(conf, "plain", port, password, encryption="require")
    assert closed_before_login(refused)
    assert new_logins(idle(plain, "plain-0"), before + 1) == []

    with pytest.raises(ValueError, match="client_tls needs tls"):
        sandbox.create_database(namespace, "bad", replicas=1, tls=False, client_tls=True)
    with pytest.raises(ValueError, match=r"no spec\.tls"):
        sandbox.serve_certificate(namespace, "plain-0", "wrong-name")


# --- verifying a pod's certificate -------------------------------------------------------------------


def test_a_pods_certificate_verifies_against_the_server_cert_ca_by_dns_name_and_by_ip_also_after_a_restart(
    sandbox: Sandbox, namespace: str, tmp_path: Path, attempt: Attempt
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    password = db.secret_data()["password"]
    ca_file = write_ca(tmp_path, db)

    for round_ in ("first start", "after a restart"):
        ip, port = db.ip("db-0"), db.port("db-0")
        by_ip = {"host": ip, "port": str(port), "ca file": str(ca_file), "check certificate hostname": "yes"}
        conf = freetds_conf(
            tmp_path,
            {
                "by-name": verifying(db, "db-0", ca_file),
                "by-ip": by_ip,  # the name checked is the host: the pod IP, an IP SAN
                "other-pod": verifying(db, "db-0", ca_file, hostname=f"db-1.db-pods.{namespace}.svc"),
            },
        )
        before = last_connection(db.instance("db-0"))
        assert attempt(conf, "by-name", port, password, ("SELECT 1",), encryption="require") is None, round_
        assert attempt(conf, "by-ip", port, password, ("SELECT 1",), encryption="require") is None, round_
        refused = attempt(conf, "other-pod", port, password, encryption="require")
        assert closed_before_login(refused), f"{round_}: another pod's name is not this one's"
        state = idle(db, "db-0")
        assert len(new_logins(state, before)) == 2, round_
        assert all(login.encrypted for login in state.logins if login.connection > before)
        assert all(batch.encrypted for batch in state.batches if batch.connection > before)
        if round_ == "first start":
            old_ip = ip
            assert restart(sandbox, db, "db-0") != old_ip


@pytest.mark.parametrize("kind", ["foreign-ca", "wrong-name"])
def test_a_certificate_from_another_ca_or_for_another_name_is_refused_before_any_login(
    sandbox: Sandbox, namespace: str, tmp_path: Path, attempt: Attempt, kind: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    password = db.secret_data()["password"]
    ca_file = write_ca(tmp_path, db)
    ca_pem = ca_file.read_bytes()
    port = db.port("db-0")
    conf = freetds_conf(tmp_path, {"db-0": verifying(db, "db-0", ca_file)})

    sandbox.serve_certificate(namespace, "db-0", kind)  # the running server, at once

    cert = served(db, "db-0")
    if kind == "foreign-ca":
        assert not issued_by(cert, ca_pem)
        assert sans(cert) == ({pod_dns(db, "db-0"), f"{pod_dns(db, 'db-0')}.cluster.local"}, {db.ip("db-0")})
    else:
        assert issued_by(cert, ca_pem)
        dns, ips = sans(cert)
        assert pod_dns(db, "db-0") not in dns and ips == set()
    before = last_connection(db.instance("db-0"))
    refused = attempt(conf, "db-0", port, password, ("SELECT 1",), encryption="require")
    assert closed_before_login(refused)
    assert "Login failed" not in refused[1]
    state = idle(db, "db-0")
    assert new_logins(state, before) == [], "no LOGIN7 (no password) reached the server"
    assert [h.completed for h in state.handshakes if h.connection > before] == [kind == "wrong-name"]
    assert [b for b in state.batches if b.connection > before] == []

    sandbox.serve_certificate(namespace, "db-0", "kubedb")
    assert attempt(conf, "db-0", port, password, ("SELECT 1",), encryption="require") is None


def test_a_certificate_switch_holds_across_restarts_until_switched_back(
    sandbox: Sandbox, namespace: str, tmp_path: Path, attempt: Attempt
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    password = db.secret_data()["password"]
    ca_file = write_ca(tmp_path, db)
    sandbox.serve_certificate(namespace, "db-0", "foreign-ca")

    ip = restart(sandbox, db, "db-0")

    cert = served(db, "db-0")
    assert not issued_by(cert, ca_file.read_bytes()) and ip in sans(cert)[1], "foreign, for the new IP"
    conf = freetds_conf(tmp_path, {"db-0": verifying(db, "db-0", ca_file)})
    refused = attempt(conf, "db-0", db.port("db-0"), password, encryption="require")
    assert closed_before_login(refused)
    sandbox.serve_certificate(namespace, "db-0", "kubedb")
    assert attempt(conf, "db-0", db.port("db-0"), password, encryption="require") is None
    with pytest.raises(ValueError, match="kind must be one of"):
        sandbox.serve_certificate(namespace, "db-0", "expired")


# --- clientTLS -----------------------------------------------------------------------------------------


def test_client_tls_forces_encryption_even_for_a_client_that_did_not_ask(
    sandbox: Sandbox, namespace: str, attempt: Attempt
) -> None:
    db = sandbox.create_database(namespace, "forced", replicas=1, client_tls=True)
    assert db.get()["spec"]["tls"]["clientTLS"] is True
    assert db.instance("forced-0").force_encryption  # mssql.conf forceencryption = 1
    password = db.secret_data()["password"]
    host, port = db.ip("forced-0"), db.port("forced-0")

    # pymssql's default asks for login-only encryption (PRELOGIN OFF); the server answers REQ.
    connection = pymssql.connect(server=host, port=str(port), user="sa", password=password, login_timeout=5)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchall() == [(1,)]
    state = idle(db, "forced-0")
    assert [(c.client, c.reply, c.mode) for c in state.connections] == [
        (Encryption.OFF, Encryption.REQ, TlsMode.FULL)
    ]
    assert [login.encrypted for login in state.logins] == [True]
    assert state.batches and all(batch.encrypted for batch in state.batches)

    refused = attempt(None, host, port, password, encryption="off")  # a client that refuses TLS
    assert closed_before_login(refused)
    state = idle(db, "forced-0")
    assert state.connections[-1].mode is TlsMode.REFUSED
    assert len(state.logins) == 1 and not state.login_arrived_unencrypted()


# --- the clear-text wire record ------------------------------------------------------------------------


def test_the_clear_text_wire_record_holds_a_clear_text_logins_password_decoded(
    sandbox: Sandbox, namespace: str, attempt: Attempt
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    made_up = made_up_password()

    outcome = attempt(None, db.ip("db-0"), db.port("db-0"), made_up, encryption="off")

    assert outcome is not None and outcome[0] == 18456  # the server read the login: it was refused
    state = idle(db, "db-0")
    assert state.login_arrived_unencrypted()
    assert {(entry.kind, entry.text) for entry in state.clear_text} == {
        ("login7-user", "sa"),
        ("login7-password", made_up),
    }
    assert made_up in sandbox.clear_text_wire()
    assert f"{namespace}/db-0" not in sandbox.unencrypted_alter_logins()


def test_batches_and_rpcs_in_clear_text_are_recorded_and_an_alter_login_outside_tls_is_reported(
    sandbox: Sandbox, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    state = db.instance("db-0")
    made_up, in_rpc = made_up_password(), made_up_password()
    statement = f"ALTER LOGIN [nobody] WITH PASSWORD = N'{made_up}'"  # no such login: nothing changes
    try:
        # pymssql's default: LOGIN7 inside TLS (the real password stays encrypted), batches in clear.
        connection = pymssql.connect(
            server=db.ip("db-0"),
            port=str(db.port("db-0")),
            user="sa",
            password=db.secret_data()["password"],
            login_timeout=5,
            autocommit=True,
        )
        with connection, connection.cursor() as cursor:
            with pytest.raises(pymssql.DatabaseError):
                cursor.execute(statement)
            with pytest.raises(pymssql.DatabaseError):  # an RPC request: the emulator has no procedures
                cursor.callproc("sp_nothing", (in_rpc,))
        idle(db, "db-0")

        assert not state.login_arrived_unencrypted()
        assert ("batch", statement) in {(entry.kind, entry.text) for entry in state.clear_text}
        assert not any(entry.kind.startswith("login7") for entry in state.clear_text)
        assert any(entry.kind == "rpc" and in_rpc in entry.text for entry in state.clear_text)
        assert statement in sandbox.clear_text_wire()
        assert f"{namespace}/db-0" in sandbox.unencrypted_alter_logins()
    finally:
        # This test's own deliberate clear text is forgotten, so the session's leak checks
        # (tests/e2e/test_no_leaks.py) judge only what the product and the other tests did.
        state.clear_records()
    assert f"{namespace}/db-0" not in sandbox.unencrypted_alter_logins()


def test_connections_inside_tls_leave_nothing_in_the_clear_text_wire_record(
    sandbox: Sandbox, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    password = db.secret_data()["password"]
    changed = made_up_password()

    assert logs_in(db, "db-0", password)  # tests/support.py: encryption="require"
    connection = pymssql.connect(
        server=db.ip("db-0"),
        port=str(db.port("db-0")),
        user="sa",
        password=password,
        login_timeout=5,
        autocommit=True,
        encryption="require",
    )
    with connection, connection.cursor() as cursor:
        cursor.execute(f"ALTER LOGIN [sa] WITH PASSWORD = N'{changed}'")
    state = idle(db, "db-0")

    assert state.password_of("sa") == changed
    assert len(state.logins) == 2 and all(login.encrypted for login in state.logins)
    assert state.clear_text == [] and state.clear_text_dropped == 0
    assert f"{namespace}/db-0" not in sandbox.unencrypted_alter_logins()


def test_the_records_stay_bounded_and_remember_what_they_had_to_drop() -> None:
    state = InstanceState("bounded", "Sa-Passw0rd!")
    for number in range(MAX_RECORDS + 10):
        state.record_batch(number, "alter-login" if number == 0 else "select", encrypted=number != 0)
        state.record_login(number, encrypted=number != 0, accepted=True)
    assert len(state.batches) == MAX_RECORDS and len(state.logins) == MAX_RECORDS
    assert state.alter_login_arrived_unencrypted() and state.login_arrived_unencrypted(), "kept apart"

    state.record_clear_text(1, "batch", "SELECT 1")
    state.record_clear_text(2, "batch", "SELECT 1")  # the same text is kept once
    state.record_clear_text(3, "batch", "x" * (MAX_CLEAR_TEXT_CHARS + 100))
    assert [len(entry.text) for entry in state.clear_text] == [8, MAX_CLEAR_TEXT_CHARS]
    for number in range(2 * MAX_CLEAR_TEXT_TOTAL // MAX_CLEAR_TEXT_CHARS):
        state.record_clear_text(number, "batch", f"{number:08d}" * (MAX_CLEAR_TEXT_CHARS // 8))
    assert sum(len(entry.text) for entry in state.clear_text) <= MAX_CLEAR_TEXT_TOTAL
    assert state.clear_text_dropped > 0
    assert state.clear_text[0].text == "SELECT 1", "the first arrivals are kept"

    state.clear_records()
    assert state.clear_text == [] and state.clear_text_dropped == 0
    assert not state.alter_login_arrived_unencrypted() and not state.login_arrived_unencrypted()
