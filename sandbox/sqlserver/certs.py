"""Certificates for emulated SQL Server instances: a CA, and server certificates it signs.

Purpose: give each emulated instance the TLS identity a real pod would have (DNS names such as
``<pod>.<db>-pods.<ns>.svc`` and the pod IP as subject alternative names), signed by a CA the test
or the sandbox chooses: its own (``sandbox.pki``'s files, through ``CertificateAuthority.from_files``)
or one made here.

Also the control plane's own CA and serving certificates (``sandbox.pki`` writes them to files).
Boundaries: pure generation with ``cryptography``; everything stays PEM bytes in memory unless a
caller asks to write files. No TLS contexts here (transport.py builds those).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=2)
BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock differences


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    """A certificate for ``key``'s public half, valid from a few minutes ago for two days."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
    )


@dataclass(frozen=True)
class _PemPair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, cert: Path, key: Path) -> None:
        """Write both as PEM files; the key is readable by its owner only."""
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(self.key_pem)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class CertificateAuthority(_PemPair):
    """A CA certificate and its private key (PEM)."""

    @classmethod
    def from_files(cls, cert: Path | str, key: Path | str) -> CertificateAuthority:
        """Load a CA written elsewhere, e.g. ``sandbox.pki.write_pki``'s ca.crt and ca.key."""
        return cls(Path(cert).read_bytes(), Path(key).read_bytes())


@dataclass(frozen=True)
class ServerCertificate(_PemPair):
    """A server's certificate (leaf only; clients are given the CA) and its private key (PEM)."""

    @classmethod
    def from_files(cls, cert: Path | str, key: Path | str) -> ServerCertificate:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes())

    def subject_alt_names(self) -> tuple[list[str], list[str]]:
        """(DNS names, IP addresses) the certificate is valid for."""
        try:
            sans = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return [], []
        return sans.get_values_for_type(x509.DNSName), [
            str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
        ]


def make_ca(common_name: str = "mssql-auth-rotation-sqlserver-ca") -> CertificateAuthority:
    """A fresh self-signed CA (EC P-256), valid from a few minutes ago for two days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue_server_certificate(
    ca: CertificateAuthority,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    common_name: str | None = None,
    organization: str | None = None,
    organizational_unit: str | None = None,
) -> ServerCertificate:
    """A TLS server certificate signed by ca, valid for the given DNS names and IP addresses.

    The common name defaults to the first DNS name (or IP address); clients that check host names
    look at the subject alternative names first. The key is EC P-256 (fast to make: well under a
    millisecond per certificate).
    """
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    subject_name = common_name or (list(dns_names) + list(ip_addresses))[0]
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return ServerCertificate(
        *_issue(
            ca,
            _subject(subject_name, organization, organizational_unit),
            alt_names,
            ExtendedKeyUsageOID.SERVER_AUTH,
        )
    )


def issue_client_certificate(
    ca: CertificateAuthority,
    common_name: str,
    *,
    organization: str | None = None,
    organizational_unit: str | None = None,
) -> ServerCertificate:
    """A TLS client certificate (extended key usage clientAuth, no alternative names) signed by ca."""
    subject = _subject(common_name, organization, organizational_unit)
    return ServerCertificate(*_issue(ca, subject, [], ExtendedKeyUsageOID.CLIENT_AUTH))


SELF_SIGNED_COMMON_NAME = "SSL_Self_Signed_Fallback"


def self_signed_certificate(common_name: str = SELF_SIGNED_COMMON_NAME) -> ServerCertificate:
    """What SQL Server serves when no certificate is configured: one it makes itself at each start,
    self-signed, named ``SSL_Self_Signed_Fallback`` and carrying no alternative names. Clients can
    encrypt with it but cannot verify it against any CA. (EC P-256 here; SQL Server's is RSA.)"""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _subject(common_name, None, None)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ServerCertificate(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _subject(common_name: str, organization: str | None, organizational_unit: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if organizational_unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit))
    return x509.Name(attributes)


def _issue(
    ca: CertificateAuthority,
    subject: x509.Name,
    alt_names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a fresh EC P-256 leaf signed by ca."""
    signer = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"unsupported CA key type {type(signer).__name__}")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca.certificate.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def pod_dns_name(pod: str, db: str, namespace: str) -> str:
    """The name a pod of a KubeDB MSSQLServer has through the governing service ``<db>-pods``."""
    return f"{pod}.{db}-pods.{namespace}.svc"


def issue_pod_certificate(
    ca: CertificateAuthority, *, pod: str, db: str, namespace: str, pod_ip: str
) -> ServerCertificate:
    """A pod's certificate: its DNS names (short and cluster-qualified) and its IP address."""
    name = pod_dns_name(pod, db, namespace)
    return issue_server_certificate(
        ca, dns_names=[name, f"{name}.cluster.local"], ip_addresses=[pod_ip], common_name=name
    )
