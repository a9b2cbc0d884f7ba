"""Self-made certificates and keys for the control plane (kube-apiserver, and the fault proxy in
front of it), written to files: made by ``sandbox.sqlserver.certs``, the sandbox's one certificate
factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.sqlserver.certs import CertificateAuthority, issue_server_certificate, make_ca


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path  # kept so that other sandbox servers (sandbox.faultproxy) can be issued certificates
    serving_cert: Path
    serving_key: Path
    service_account_key: Path  # RSA private key: signs service-account tokens
    service_account_pub: Path


def issue_serving_cert(ca_cert: Path, ca_key: Path, cert: Path, key: Path, common_name: str) -> None:
    """Write a serving certificate for 127.0.0.1/localhost signed by the CA, and its private key."""
    ca = CertificateAuthority.from_files(ca_cert, ca_key)
    serving = issue_server_certificate(
        ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"], common_name=common_name
    )
    serving.write(cert, key)


def write_pki(folder: Path) -> Pki:
    """Write a CA (certificate and key), a serving certificate for 127.0.0.1/localhost and a
    service-account key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        service_account_key=folder / "sa.key",
        service_account_pub=folder / "sa.pub",
    )
    make_ca("mssql-auth-rotation-sandbox-ca").write(pki.ca_cert, pki.ca_key)
    issue_serving_cert(pki.ca_cert, pki.ca_key, pki.serving_cert, pki.serving_key, "kube-apiserver")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki.service_account_key.touch(mode=0o600)
    pki.service_account_key.chmod(0o600)
    pki.service_account_key.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
