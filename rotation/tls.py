"""How the rotation reaches each replica over TLS: what it trusts and which name it checks. Pure logic.

Verified connections (VerifyFull, VerifyCA) speak TDS 8.0 "strict" (FreeTDS ``encryption = strict``,
SQL Server 2022): TLS before any TDS byte, the certificate checked before anything is sent. The TDS
7.x way (``encryption = require``) negotiates encryption in a clear-text PRELOGIN exchange that an
on-path attacker can rewrite with one byte, after which FreeTDS sends every batch, ALTER LOGIN and
both passwords included, in clear text (docs/freetds-tls.md, docs/security.md).

TrustServerCertificate keeps TDS 7.x with encryption required: FreeTDS's strict mode always checks
the certificate (against the system's CAs when no CA file is named, measured), and a connection that
verifies nothing is open to any on-path attacker anyway, downgrade or not; the report says so.

pymssql has no argument for a CA, a certificate name or strict encryption (its ``encryption=``
argument overrides the section, so rotation/sqlserver.py never passes it); its bundled FreeTDS reads
them from a freetds.conf section, one per replica. This module decides what that section says;
rotation/freetds.py writes it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict

from rotation.params import TlsVerify

CA_KEY = "ca.crt"  # the key KubeDB's (cert-manager's) kubernetes.io/tls secrets keep the CA under
SERVER_CERT_ALIAS = "server"


class TlsProfile(BaseModel):
    """What the rotation trusts for one database. The CA is a public certificate, never a secret."""

    model_config = ConfigDict(frozen=True)

    verify: TlsVerify
    ca_pem: str | None = None  # the PEM bundle to trust; None only with TrustServerCertificate
    ca_source: str = ""  # where it came from, for messages and the report

    @property
    def strict(self) -> bool:
        """TDS 8.0: TLS first, nothing negotiated in clear text (every verified mode)."""
        return self.verify is not TlsVerify.TRUST_SERVER_CERTIFICATE

    def describe(self) -> str:
        if not self.strict:
            return (
                "encrypted (TDS 7.x), certificates NOT verified (tls_verify=TrustServerCertificate): "
                "open to an on-path attacker, including a downgrade to clear text"
            )
        names = "and each pod's DNS name" if self.verify is TlsVerify.VERIFY_FULL else "(names not checked)"
        return f"TDS 8.0 strict TLS, certificates verified against the CA in {self.ca_source} {names}"

    @property
    def ca_digest(self) -> str:
        return hashlib.sha256((self.ca_pem or "").encode()).hexdigest()


def pod_dns_name(pod: str, database: str, namespace: str) -> str:
    """The name KubeDB's own client dials: ``<pod>.<db>-pods.<ns>.svc`` (governing service)."""
    return f"{pod}.{database}-pods.{namespace}.svc"


def server_cert_secret(database: dict[str, Any]) -> str | None:
    """The Secret holding the database's server certificate and CA, if it has ``spec.tls``.

    KubeDB names it ``<db>-server-cert`` unless ``spec.tls.certificates`` gives the server alias
    another secretName (apimachinery: MSSQLServer.GetCertSecretName).
    """
    spec = database.get("spec") or {}
    tls = spec.get("tls")
    if not tls:
        return None
    for certificate in tls.get("certificates") or []:
        if certificate.get("alias") == SERVER_CERT_ALIAS and certificate.get("secretName"):
            return str(certificate["secretName"])
    return f"{database['metadata']['name']}-server-cert"


def section_name(host: str, port: int, server_name: str, profile: TlsProfile) -> str:
    """A freetds.conf section name unique to one endpoint and what is trusted for it."""
    key = f"{host}|{port}|{server_name}|{profile.verify}|{profile.ca_digest}"
    return "mssql-auth-rotation-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def section(
    name: str, host: str, port: int, server_name: str, profile: TlsProfile, ca_file: str | None
) -> str:
    """One freetds.conf section: where to connect, how to encrypt, and what to check."""
    encryption = "strict" if profile.strict else "require"
    lines = [f"[{name}]", f"\thost = {host}", f"\tport = {port}", f"\tencryption = {encryption}"]
    if profile.strict:
        if ca_file is None:
            raise ValueError(f"{profile.verify} needs a CA file")
        lines.append(f"\tca file = {ca_file}")
        if profile.verify is TlsVerify.VERIFY_FULL:
            lines += ["\tcheck certificate hostname = yes", f"\tcertificate hostname = {server_name}"]
        else:
            lines.append("\tcheck certificate hostname = no")
    return "\n".join(lines) + "\n"
