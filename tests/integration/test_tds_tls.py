"""TLS between the real pymssql 2.4.6 (FreeTDS 1.5) and the emulated SQL Server, over loopback TCP.

What the server saw comes from the instance's encryption record (connections, handshakes, logins,
batches). Certificate checks are configured as the product would: a freetds.conf named by
FREETDSCONF (read by FreeTDS at every connect). Refused connections whose error number matters run
in a fresh interpreter, because pymssql reports the first server error of a process again later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymssql
import pytest

from sandbox.sqlserver import (
    CertificateAuthority,
    Encryption,
    InstanceState,
    ServerCertificate,
    TdsServer,
    TlsMode,
    issue_server_certificate,
    make_ca,
)
from tests.support import closed_before_login

SA_PASSWORD = "Sa-Passw0rd!"
NEW_PASSWORD = "New-Passw0rd!"
POD_NAME = "mssql-0.mssql-pods.demo.svc"
OFF, ON, NOT_SUP, REQ = Encryption.OFF, Encryption.ON, Encryption.NOT_SUP, Encryption.REQ

StartServer = Callable[..., tuple[InstanceState, TdsServer]]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca("test-ca")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return make_ca("some-other-ca")


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start emulated instances with the given certificate; all are stopped after the test."""
    running: list[TdsServer] = []

    def start(
        certificate: ServerCertificate | None, *, force_encryption: bool = False, host: str = "127.0.0.1"
    ) -> tuple[InstanceState, TdsServer]:
        state = InstanceState(
            "mssql-0", SA_PASSWORD, certificate=certificate, force_encryption=force_encryption
        )
        server = TdsServer(state, host, 0)
        server.start()
        running.append(server)
        return state, server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def freetds_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write a freetds.conf and point FREETDSCONF at it for this test."""

    def write(text: str) -> Path:
        path = tmp_path / "freetds.conf"
        path.write_text(text)
        monkeypatch.setenv("FREETDSCONF", str(path))
        return path

    return write


def ca_file(tmp_path: Path, ca: CertificateAuthority, name: str = "ca.crt") -> Path:
    path = tmp_path / name
    path.write_bytes(ca.cert_pem)
    return path


def verifying_conf(ca_path: Path) -> str:
    return f"[global]\n\tca file = {ca_path}\n\tcheck certificate hostname = yes\n"


def connect(server: TdsServer, host: str | None = None, **options: Any) -> pymssql.Connection:
    bound_host, port = server.address
    return pymssql.connect(
        server=host or bound_host, port=str(port), user="sa", password=SA_PASSWORD,
        autocommit=True, login_timeout=5, **options,
    )  # fmt: skip


def change_password(server: TdsServer, **options: Any) -> None:
    """Connect, read, and run an ALTER LOGIN, as a rotation would."""
    with connect(server, **options) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        assert cursor.fetchall() == [(1,)]
        cursor.execute(f"ALTER LOGIN [sa] WITH PASSWORD = N'{NEW_PASSWORD}'")


_OUTCOME = """
import json, sys, pymssql
kwargs = json.loads(sys.stdin.read())
try:
    pymssql.connect(login_timeout=5, **kwargs).close()
    print(json.dumps(None))
except pymssql.OperationalError as error:
    number, message = error.args[0]
    print(json.dumps([number, message.decode("utf-8", "replace")]))
"""


def connect_outcome(
    server: TdsServer, host: str | None = None, *, password: str = SA_PASSWORD, **options: Any
) -> tuple[int, str] | None:
    """None if pymssql connects, else (number, message), from a fresh interpreter with this FREETDSCONF."""
    bound_host, port = server.address
    kwargs = {"server": host or bound_host, "port": str(port), "user": "sa", "password": password, **options}
    probe = subprocess.run(
        [sys.executable, "-c", _OUTCOME], input=json.dumps(kwargs), capture_output=True, text=True,
        timeout=60, check=True, env=dict(os.environ),
    )  # fmt: skip
    result = json.loads(probe.stdout)
    return None if result is None else (result[0], result[1])


def batch_encryption(state: InstanceState) -> set[tuple[str, bool]]:
    return {(batch.kind, batch.encrypted) for batch in state.batches}


# --- how much is encrypted -----------------------------------------------------------------------


def test_encryption_require_sends_the_login_and_every_batch_inside_tls(
    ca: CertificateAuthority, start_server: StartServer
) -> None:
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    change_password(server, encryption="require")
    assert state.password_of("sa") == NEW_PASSWORD
    assert [(c.client, c.reply, c.mode) for c in state.connections] == [(ON, ON, TlsMode.FULL)]
    assert [login.encrypted for login in state.logins] == [True]
    assert batch_encryption(state) == {("set", True), ("select", True), ("alter-login", True)}
    assert not state.alter_login_arrived_unencrypted()


@pytest.mark.parametrize("encryption", [None, "request"])
def test_the_default_and_request_encrypt_only_the_login_when_the_server_does_not_force(
    ca: CertificateAuthority, start_server: StartServer, encryption: str | None
) -> None:
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    change_password(server, **({} if encryption is None else {"encryption": encryption}))
    assert [(c.client, c.reply, c.mode) for c in state.connections] == [(OFF, OFF, TlsMode.LOGIN_ONLY)]
    assert [h.completed for h in state.handshakes] == [True]
    assert [login.encrypted for login in state.logins] == [True]
    assert batch_encryption(state) == {("set", False), ("select", False), ("alter-login", False)}
    assert state.alter_login_arrived_unencrypted()


def test_encryption_off_sends_everything_in_clear_even_to_a_server_with_a_certificate(
    ca: CertificateAuthority, start_server: StartServer
) -> None:
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    change_password(server, encryption="off")
    assert [(c.client, c.mode) for c in state.connections] == [(NOT_SUP, TlsMode.NONE)]
    assert state.login_arrived_unencrypted() and state.alter_login_arrived_unencrypted()


@pytest.mark.parametrize("encryption", [None, "request", "require"])
def test_a_server_forcing_encryption_gets_everything_encrypted_from_clients_that_allow_tls(
    ca: CertificateAuthority, start_server: StartServer, encryption: str | None
) -> None:
    state, server = start_server(
        issue_server_certificate(ca, ip_addresses=["127.0.0.1"]), force_encryption=True
    )
    change_password(server, **({} if encryption is None else {"encryption": encryption}))
    assert [(c.reply, c.mode) for c in state.connections] == [(REQ, TlsMode.FULL)]
    assert batch_encryption(state) == {("set", True), ("select", True), ("alter-login", True)}
    assert state.password_of("sa") == NEW_PASSWORD


def test_a_server_forcing_encryption_refuses_a_client_with_encryption_off(
    ca: CertificateAuthority, start_server: StartServer
) -> None:
    state, server = start_server(
        issue_server_certificate(ca, ip_addresses=["127.0.0.1"]), force_encryption=True
    )
    outcome = connect_outcome(server, encryption="off")
    assert closed_before_login(outcome)
    assert [(c.client, c.reply, c.mode) for c in state.connections] == [(NOT_SUP, REQ, TlsMode.REFUSED)]
    assert state.logins == [] and state.batches == []


def test_encryption_require_refuses_a_server_without_a_certificate(start_server: StartServer) -> None:
    state, server = start_server(None)
    outcome = connect_outcome(server, encryption="require")
    assert closed_before_login(outcome)
    assert state.logins == []


def test_a_ca_file_alone_does_not_stop_a_clear_text_login_to_a_server_without_tls(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    # Only encryption="require" protects against a server (or a man in the middle) that answers NOT_SUP.
    freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    state, server = start_server(None)
    change_password(server)
    assert state.login_arrived_unencrypted() and state.alter_login_arrived_unencrypted()


# --- certificate checks through freetds.conf -----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "dns_names", "ip_addresses"),
    [("127.0.0.1", [], ["127.0.0.1"]), ("localhost", ["localhost"], [])],
    ids=["ip-san", "dns-san"],
)
def test_the_right_ca_and_a_matching_name_connect_with_everything_encrypted(
    tmp_path: Path,
    ca: CertificateAuthority,
    start_server: StartServer,
    freetds_conf: Callable[[str], Path],
    host: str,
    dns_names: list[str],
    ip_addresses: list[str],
) -> None:
    freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, dns_names=dns_names, ip_addresses=ip_addresses))
    change_password(server, host=host, encryption="require")
    assert batch_encryption(state) == {("set", True), ("select", True), ("alter-login", True)}


@pytest.mark.parametrize("encryption", ["require", "request"])
def test_a_certificate_from_another_ca_is_refused_before_any_login_or_batch(
    tmp_path: Path,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    start_server: StartServer,
    freetds_conf: Callable[[str], Path],
    encryption: str,
) -> None:
    freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(other_ca, ip_addresses=["127.0.0.1"]))
    outcome = connect_outcome(server, encryption=encryption)
    assert closed_before_login(outcome)
    assert "Login failed" not in outcome[1]
    assert server.wait_idle(5)
    assert [h.completed for h in state.handshakes] == [False]  # the client broke the handshake off
    assert state.logins == [] and state.batches == []


@pytest.mark.parametrize(
    ("host", "dns_names", "ip_addresses"),
    [
        ("127.0.0.1", ["localhost"], []),  # an IP address is matched against IP SANs only
        ("localhost", [], ["127.0.0.1"]),  # a name is matched against DNS SANs only
        ("127.0.0.1", ["elsewhere.example"], ["127.0.0.9"]),
    ],
    ids=["ip-vs-dns-san", "name-vs-ip-san", "other-host"],
)
def test_a_certificate_for_another_name_is_refused_when_host_names_are_checked(
    tmp_path: Path,
    ca: CertificateAuthority,
    start_server: StartServer,
    freetds_conf: Callable[[str], Path],
    host: str,
    dns_names: list[str],
    ip_addresses: list[str],
) -> None:
    freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, dns_names=dns_names, ip_addresses=ip_addresses))
    outcome = connect_outcome(server, host, encryption="require")
    assert closed_before_login(outcome)
    assert server.wait_idle(5)
    assert [h.completed for h in state.handshakes] == [True]  # FreeTDS checks the name after the handshake
    assert state.logins == [] and state.batches == []


def test_a_wrong_password_over_tls_is_a_login_failure_not_a_tls_failure(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    outcome = connect_outcome(server, password="Wrong-Passw0rd", encryption="require")
    assert outcome is not None and outcome[0] == 18456 and "Login failed for user 'sa'." in outcome[1]
    assert [(login.encrypted, login.accepted) for login in state.logins] == [(True, False)]


# --- one freetds.conf for many servers -----------------------------------------------------------


def test_a_section_can_check_the_pods_dns_name_while_connecting_to_its_ip(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    state, server = start_server(issue_server_certificate(ca, dns_names=[POD_NAME]), host="127.0.0.2")
    trusted = ca_file(tmp_path, ca)
    freetds_conf(
        "[global]\n"
        f"[right-name]\n\thost = 127.0.0.2\n\tca file = {trusted}\n\tcertificate hostname = {POD_NAME}\n"
        f"[wrong-name]\n\thost = 127.0.0.2\n\tca file = {trusted}\n"
        "\tcertificate hostname = mssql-1.mssql-pods.demo.svc\n"
    )
    change_password(server, host="right-name", encryption="require")  # the section: host, CA file, name
    assert batch_encryption(state) == {("set", True), ("select", True), ("alter-login", True)}
    with pytest.raises(pymssql.OperationalError):
        connect(server, host="wrong-name", encryption="require")
    assert server.wait_idle(5)
    assert len(state.logins) == 1


def test_one_freetds_conf_with_a_section_per_server_serves_threads_with_different_cas_at_once(
    tmp_path: Path, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    cas = [make_ca(f"ca-{index}") for index in range(3)]
    servers = [start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))[1] for ca in cas]
    sections = ["[global]"]
    for index, ca in enumerate(cas):
        sections += [
            f"[db-{index}]",
            "\thost = 127.0.0.1",
            f"\tca file = {ca_file(tmp_path, ca, f'ca-{index}.crt')}",
        ]
    sections += ["[db-0-wrong-ca]", "\thost = 127.0.0.1", f"\tca file = {tmp_path / 'ca-1.crt'}"]
    freetds_conf("\n".join(sections) + "\n")
    outcomes: dict[tuple[str, int], bool] = {}

    def attempt(section: str, server: TdsServer, round_: int) -> None:
        try:
            connect(server, host=section, encryption="require").close()
            outcomes[(section, round_)] = True
        except pymssql.OperationalError:
            outcomes[(section, round_)] = False

    targets = [(f"db-{index}", server) for index, server in enumerate(servers)] + [
        ("db-0-wrong-ca", servers[0])
    ]
    threads = [
        threading.Thread(target=attempt, args=(section, server, round_))
        for round_ in range(3)
        for section, server in targets
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == len(threads)
    assert {section: ok for (section, _), ok in outcomes.items()} == {
        "db-0": True,
        "db-1": True,
        "db-2": True,
        "db-0-wrong-ca": False,
    }
    assert len({(section, ok) for (section, _), ok in outcomes.items()}) == 4  # each section always the same


def test_freetds_conf_is_read_again_at_every_connect(
    tmp_path: Path,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    start_server: StartServer,
    freetds_conf: Callable[[str], Path],
) -> None:
    _, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    conf = freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    connect(server, encryption="require").close()
    conf.write_text(verifying_conf(ca_file(tmp_path, other_ca, "other.crt")))
    with pytest.raises(pymssql.OperationalError):
        connect(server, encryption="require")


# --- TDS 8.0 strict, and the one-byte downgrade of TDS 7.x ---------------------------------------


def strict_conf(ca_path: Path, *, check_name: bool = True) -> str:
    check = "yes" if check_name else "no"
    return f"[global]\n\tencryption = strict\n\tca file = {ca_path}\n\tcheck certificate hostname = {check}\n"


def test_strict_starts_tls_before_any_tds_byte_and_sends_everything_inside_it(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    freetds_conf(strict_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    change_password(server)  # no encryption= argument: the section's strict mode applies
    assert server.wait_idle(5)
    assert [(c.client, c.mode) for c in state.connections] == [(None, TlsMode.STRICT)]
    assert [(h.completed, h.alpn) for h in state.handshakes] == [(True, "tds/8.0")]
    assert [login.encrypted for login in state.logins] == [True]
    assert batch_encryption(state) == {("set", True), ("select", True), ("alter-login", True)}
    assert state.clear_text == []


def test_a_one_byte_downgrade_puts_alter_login_in_clear_text_despite_encryption_require(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    """The attack strict mode exists for: TDS 7.x negotiates encryption in a clear PRELOGIN exchange."""
    freetds_conf(verifying_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    state.faults.downgrade_prelogin = True
    change_password(server, encryption="require")  # the certificate IS verified
    assert server.wait_idle(5)
    assert [(c.client, c.reply, c.mode) for c in state.connections] == [(ON, OFF, TlsMode.LOGIN_ONLY)]
    assert ("alter-login", False) in batch_encryption(state)
    assert any(NEW_PASSWORD in entry.text for entry in state.clear_text if entry.kind == "batch")


def test_strict_is_out_of_reach_of_the_downgrade(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    freetds_conf(strict_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    state.faults.downgrade_prelogin = True
    change_password(server)
    assert server.wait_idle(5)
    assert [c.mode for c in state.connections] == [TlsMode.STRICT]
    assert batch_encryption(state) == {("set", True), ("select", True), ("alter-login", True)}
    assert state.clear_text == []


def test_a_server_that_closes_strict_connections_gets_no_login_and_the_client_does_not_fall_back(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    """SQL Server 2019, or an attacker blocking TLS-first connections hoping for a TDS 7.x retry."""
    freetds_conf(strict_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    state.faults.refuse_strict = True
    outcome = connect_outcome(server)
    assert closed_before_login(outcome)
    assert server.wait_idle(5)
    assert [c.mode for c in state.connections] == [TlsMode.REFUSED]  # one attempt, no PRELOGIN retry
    assert state.logins == [] and state.clear_text == []


@pytest.mark.parametrize("check_name", [True, False], ids=["VerifyFull", "VerifyCA"])
def test_strict_refuses_a_certificate_from_another_ca_before_any_tds_byte(
    tmp_path: Path,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    start_server: StartServer,
    freetds_conf: Callable[[str], Path],
    check_name: bool,
) -> None:
    freetds_conf(strict_conf(ca_file(tmp_path, ca), check_name=check_name))
    state, server = start_server(issue_server_certificate(other_ca, ip_addresses=["127.0.0.1"]))
    outcome = connect_outcome(server)
    assert closed_before_login(outcome)
    assert server.wait_idle(5)
    assert [h.completed for h in state.handshakes] == [False]
    assert state.logins == [] and state.batches == []


def test_strict_checks_the_name_only_when_asked(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    _, server = start_server(issue_server_certificate(ca, dns_names=["elsewhere.example"]))
    freetds_conf(strict_conf(ca_file(tmp_path, ca), check_name=True))
    refused = connect_outcome(server)
    freetds_conf(strict_conf(ca_file(tmp_path, ca), check_name=False))
    accepted = connect_outcome(server)
    assert closed_before_login(refused)
    assert accepted is None


def test_strict_without_a_ca_file_refuses_every_certificate_it_cannot_chain_to_the_system_cas(
    start_server: StartServer, freetds_conf: Callable[[str], Path], ca: CertificateAuthority
) -> None:
    """Why TrustServerCertificate cannot be strict with this FreeTDS (rotation/tls.py)."""
    freetds_conf("[global]\n\tencryption = strict\n\tcheck certificate hostname = no\n")
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    outcome = connect_outcome(server)
    assert closed_before_login(outcome)
    assert state.logins == []


def test_pymssqls_encryption_argument_overrides_strict_so_the_product_never_passes_it(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer, freetds_conf: Callable[[str], Path]
) -> None:
    freetds_conf(strict_conf(ca_file(tmp_path, ca)))
    state, server = start_server(issue_server_certificate(ca, ip_addresses=["127.0.0.1"]))
    change_password(server, encryption="require")
    assert [c.mode for c in state.connections] == [TlsMode.FULL]  # TDS 7.x: exposed to the downgrade


def test_the_safe_debugging_command_checks_a_replica_without_logging_in(
    tmp_path: Path, ca: CertificateAuthority, start_server: StartServer
) -> None:
    """The command rotation/freetds.py and docs/freetds-tls.md give instead of TDSDUMP."""
    state, server = start_server(issue_server_certificate(ca, dns_names=[POD_NAME]))
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.address[1]}", "-alpn", "tds/8.0"]
    command += ["-servername", POD_NAME, "-CAfile", str(ca_file(tmp_path, ca)), "-verify_hostname", POD_NAME]
    done = subprocess.run([*command, "-brief"], input="", capture_output=True, text=True, timeout=30)
    assert "Verification: OK" in done.stdout + done.stderr
    assert server.wait_idle(5)
    assert [(h.completed, h.alpn) for h in state.handshakes] == [(True, "tds/8.0")]
    assert state.logins == []  # nothing secret was sent
