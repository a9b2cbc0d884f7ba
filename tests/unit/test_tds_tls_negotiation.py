"""Pure tests of the emulator's TLS pieces: the PRELOGIN encryption decision (encryption.py), the
ENCRYPTION option on the wire (protocol.py), batch kinds, the encryption record, certificates, and
the TLS-inside-PRELOGIN framing (transport.py) driven by Python's own TLS client over a socket pair.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sandbox.sqlserver import InstanceState
from sandbox.sqlserver import protocol as tds
from sandbox.sqlserver.certs import (
    CertificateAuthority,
    ServerCertificate,
    issue_pod_certificate,
    issue_server_certificate,
    make_ca,
)
from sandbox.sqlserver.encryption import Negotiation, TlsMode, negotiate
from sandbox.sqlserver.engine import classify_batch
from sandbox.sqlserver.protocol import Encryption
from sandbox.sqlserver.transport import PlainTransport, accept_tls, recv_exact, server_context

OFF, ON, NOT_SUP, REQ = Encryption.OFF, Encryption.ON, Encryption.NOT_SUP, Encryption.REQ

# --- the negotiation (MS-TDS 2.2.6.5, server side) -----------------------------------------------


@pytest.mark.parametrize(
    ("client", "reply", "mode"),
    [
        (OFF, NOT_SUP, TlsMode.NONE),
        (NOT_SUP, NOT_SUP, TlsMode.NONE),
        (None, NOT_SUP, TlsMode.NONE),
        (ON, NOT_SUP, TlsMode.REFUSED),
        (REQ, NOT_SUP, TlsMode.REFUSED),
    ],
)
def test_a_server_without_certificate_answers_not_supported_and_refuses_clients_that_need_tls(
    client: Encryption | None, reply: Encryption, mode: TlsMode
) -> None:
    assert negotiate(client, has_certificate=False, force_encryption=False) == Negotiation(reply, mode)


@pytest.mark.parametrize(
    ("client", "reply", "mode"),
    [
        (OFF, OFF, TlsMode.LOGIN_ONLY),
        (ON, ON, TlsMode.FULL),
        (REQ, ON, TlsMode.FULL),
        (NOT_SUP, NOT_SUP, TlsMode.NONE),
        (None, NOT_SUP, TlsMode.NONE),
    ],
)
def test_a_server_with_a_certificate_encrypts_the_login_for_off_and_everything_for_on(
    client: Encryption | None, reply: Encryption, mode: TlsMode
) -> None:
    assert negotiate(client, has_certificate=True, force_encryption=False) == Negotiation(reply, mode)


@pytest.mark.parametrize(
    ("client", "mode"),
    [
        (OFF, TlsMode.FULL),
        (ON, TlsMode.FULL),
        (REQ, TlsMode.FULL),
        (NOT_SUP, TlsMode.REFUSED),
        (None, TlsMode.REFUSED),
    ],
)
def test_a_server_forcing_encryption_answers_req_and_encrypts_everything_or_refuses(
    client: Encryption | None, mode: TlsMode
) -> None:
    assert negotiate(client, has_certificate=True, force_encryption=True) == Negotiation(REQ, mode)


def test_forcing_encryption_without_a_certificate_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="certificate"):
        negotiate(ON, has_certificate=False, force_encryption=True)


# --- the ENCRYPTION option on the wire -----------------------------------------------------------


def client_prelogin(encryption: int | None) -> bytes:
    options = [(tds.PRELOGIN_VERSION, bytes(6))]
    if encryption is not None:
        options.append((tds.PRELOGIN_ENCRYPTION, bytes((encryption,))))
    return tds.encode_prelogin(options)


@pytest.mark.parametrize("value", list(Encryption))
def test_the_clients_encryption_value_is_read_from_its_prelogin(value: Encryption) -> None:
    assert tds.prelogin_encryption(tds.parse_prelogin(client_prelogin(value))) is value


def test_the_client_certificate_flag_is_ignored_and_a_missing_option_is_none() -> None:
    assert tds.prelogin_encryption(tds.parse_prelogin(client_prelogin(0x80 | ON))) is ON
    assert tds.prelogin_encryption(tds.parse_prelogin(client_prelogin(None))) is None


def test_an_unknown_encryption_value_is_a_protocol_error() -> None:
    with pytest.raises(tds.ProtocolError):
        tds.prelogin_encryption(tds.parse_prelogin(client_prelogin(0x07)))


@pytest.mark.parametrize("value", list(Encryption))
def test_the_server_reply_carries_the_negotiated_value(value: Encryption) -> None:
    reply = tds.parse_prelogin(tds.build_prelogin_reply(version=(16, 0, 4135), encryption=value))
    assert reply[tds.PRELOGIN_ENCRYPTION] == bytes((value,))


# --- batch kinds and the encryption record -------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("ALTER LOGIN [sa] WITH PASSWORD = N'Secret-1' OLD_PASSWORD = N'Old-1'", "alter-login"),
        ("  alter\n login sa with password='x'", "alter-login"),
        ("BEGIN TRAN; ALTER LOGIN sa WITH PASSWORD = N'x'", "alter-login"),
        ("SELECT 1", "select"),
        ("SET ARITHABORT ON;SET ANSI_NULLS ON;", "set"),
        ("use [master]", "use"),
        ("BEGIN TRAN", "transaction"),
        ("IF @@TRANCOUNT > 0 COMMIT TRAN", "transaction"),
        ("ROLLBACK", "transaction"),
        ("EXEC sp_who", "other"),
        ("", "other"),
    ],
)
def test_batches_are_recorded_by_kind(sql: str, kind: str) -> None:
    assert classify_batch(sql) == kind


def test_the_record_answers_whether_an_alter_login_or_a_login_ever_arrived_in_clear() -> None:
    state = InstanceState("mssql-0", "Sa-Passw0rd!")
    number = state.record_connection(OFF, OFF, TlsMode.LOGIN_ONLY)
    state.record_login(number, encrypted=True, accepted=True)
    state.record_batch(number, "alter-login", encrypted=True)
    state.record_batch(number, "select", encrypted=False)
    assert not state.alter_login_arrived_unencrypted()
    assert not state.login_arrived_unencrypted()
    state.record_batch(number, "alter-login", encrypted=False)
    assert state.alter_login_arrived_unencrypted()
    assert [(b.kind, b.encrypted) for b in state.batches] == [
        ("alter-login", True),
        ("select", False),
        ("alter-login", False),
    ]
    state.clear_records()
    assert (state.connections, state.logins, state.batches) == ([], [], [])
    assert state.record_connection(ON, ON, TlsMode.FULL) == number + 1  # numbers keep counting


def test_forcing_encryption_needs_a_certificate_on_the_instance_too() -> None:
    with pytest.raises(ValueError, match="certificate"):
        InstanceState("mssql-0", "Sa-Passw0rd!", force_encryption=True)
    state = InstanceState("mssql-0", "Sa-Passw0rd!")
    certificate = issue_server_certificate(make_ca(), ip_addresses=["127.0.0.1"])
    state.configure_tls(certificate, force_encryption=True)
    assert state.tls_settings() == (certificate, True)
    state.configure_tls(None)
    assert (state.certificate, state.force_encryption) == (None, False)


# --- certificates --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca("unit-test-ca")


def test_a_server_certificate_carries_the_requested_names_and_is_signed_by_the_ca(
    ca: CertificateAuthority,
) -> None:
    certificate = issue_server_certificate(
        ca, dns_names=["a.example", "b.example"], ip_addresses=["10.1.2.3"]
    )
    assert certificate.subject_alt_names() == (["a.example", "b.example"], ["10.1.2.3"])
    certificate.certificate.verify_directly_issued_by(ca.certificate)
    usage = certificate.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_a_pod_certificate_names_the_pod_through_the_governing_service_and_its_ip(
    ca: CertificateAuthority,
) -> None:
    certificate = issue_pod_certificate(ca, pod="mssql-0", db="mssql", namespace="demo", pod_ip="10.244.0.7")
    dns, ips = certificate.subject_alt_names()
    assert dns == ["mssql-0.mssql-pods.demo.svc", "mssql-0.mssql-pods.demo.svc.cluster.local"]
    assert ips == ["10.244.0.7"]


def test_a_ca_and_a_certificate_round_trip_through_files_with_a_private_key_file(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert CertificateAuthority.from_files(tmp_path / "ca.crt", tmp_path / "ca.key") == ca
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    certificate = issue_server_certificate(ca, dns_names=["x.example"])
    certificate.write(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert ServerCertificate.from_files(tmp_path / "tls.crt", tmp_path / "tls.key") == certificate


def test_a_certificate_needs_at_least_one_name(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="DNS name or IP"):
        issue_server_certificate(ca)


# --- TLS inside PRELOGIN packets, then on the socket ---------------------------------------------


class HandshakeClient:
    """A TDS-style TLS client: handshake records inside PRELOGIN packets, then TLS on the socket."""

    def __init__(self, sock: socket.socket, ca: CertificateAuthority, server_name: str) -> None:
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            flight = self.outgoing.read()
            if flight:
                packets = tds.encode_packets(tds.PacketType.PRELOGIN, flight, packet_size=4096)
                self.sock.sendall(b"".join(packets))
            if done:
                return
            header = tds.parse_header(self.recv_exact(tds.HEADER_SIZE))
            assert header.type == tds.PacketType.PRELOGIN
            self.incoming.write(self.recv_exact(header.length - tds.HEADER_SIZE))

    def recv_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "server closed"
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def receive(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            try:
                data += self.tls.read(size - len(data))
            except ssl.SSLWantReadError:
                self.incoming.write(self.sock.recv(16384))
        return data


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server_end, client_end = socket.socketpair()
    server_end.settimeout(5)
    client_end.settimeout(5)
    yield server_end, client_end
    server_end.close()
    client_end.close()


def test_the_tls_handshake_travels_in_prelogin_packets_then_tls_runs_on_the_socket(
    ca: CertificateAuthority, pair: tuple[socket.socket, socket.socket]
) -> None:
    server_end, client_end = pair
    certificate = issue_server_certificate(ca, dns_names=["db.example"])
    client = HandshakeClient(client_end, ca, "db.example")
    handshake = threading.Thread(target=client.handshake)
    handshake.start()
    transport = accept_tls(server_end, PlainTransport(server_end), server_context(certificate))
    handshake.join(5)
    assert transport.encrypted and transport.cipher is not None and transport.cipher[1] == "TLSv1.2"

    client.send(b"hello through TLS")
    assert recv_exact(transport, len(b"hello through TLS"), eof_ok=False) == b"hello through TLS"
    transport.sendall(b"x" * 40000)  # several TLS records
    assert client.receive(40000) == b"x" * 40000


def test_dropping_tls_after_login_goes_back_to_clear_text_on_the_same_socket(
    ca: CertificateAuthority, pair: tuple[socket.socket, socket.socket]
) -> None:
    server_end, client_end = pair
    client = HandshakeClient(client_end, ca, "db.example")
    handshake = threading.Thread(target=client.handshake)
    handshake.start()
    certificate = issue_server_certificate(ca, dns_names=["db.example"])
    tls = accept_tls(server_end, PlainTransport(server_end), server_context(certificate))
    handshake.join(5)
    login7 = struct.pack(">BBHHBB", tds.PacketType.LOGIN7, 1, 12, 0, 1, 0) + b"LGN7"
    client.send(login7)
    assert recv_exact(tls, 12, eof_ok=False) == login7
    plain = tls.drop_tls()
    assert not plain.encrypted
    client_end.sendall(b"clear batch")
    assert recv_exact(plain, 11, eof_ok=False) == b"clear batch"


def test_a_client_that_does_not_trust_the_certificate_breaks_the_handshake_off(
    ca: CertificateAuthority, pair: tuple[socket.socket, socket.socket]
) -> None:
    server_end, client_end = pair
    stranger = issue_server_certificate(make_ca("stranger"), dns_names=["db.example"])
    client = HandshakeClient(client_end, ca, "db.example")
    failures: list[BaseException] = []

    def handshake() -> None:
        try:
            client.handshake()
        except ssl.SSLCertVerificationError as error:
            failures.append(error)
            client_end.sendall(
                b"".join(
                    tds.encode_packets(tds.PacketType.PRELOGIN, client.outgoing.read(), packet_size=4096)
                )
            )
            client_end.close()

    thread = threading.Thread(target=handshake)
    thread.start()
    with pytest.raises((ssl.SSLError, tds.ProtocolError)):
        accept_tls(server_end, PlainTransport(server_end), server_context(stranger))
    thread.join(5)
    assert len(failures) == 1


def test_a_plain_packet_in_place_of_the_handshake_is_a_protocol_error(
    ca: CertificateAuthority, pair: tuple[socket.socket, socket.socket]
) -> None:
    server_end, client_end = pair
    certificate = issue_server_certificate(ca, dns_names=["db.example"])
    client_end.sendall(b"".join(tds.encode_packets(tds.PacketType.LOGIN7, b"not TLS", packet_size=4096)))
    with pytest.raises(tds.ProtocolError, match="TLS handshake"):
        accept_tls(server_end, PlainTransport(server_end), server_context(certificate))
