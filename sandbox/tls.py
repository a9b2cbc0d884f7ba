"""TLS for the sandbox's databases, as KubeDB and cert-manager set it up, and the certificate each
pod's SQL Server serves.

- A database created with ``spec.tls`` gets its own CA (the sandbox plays the cert-manager Issuer
  ``<db>-ca`` that ``spec.tls.issuerRef`` names; no Issuer object exists, since cert-manager's CRDs
  are not installed) and the ``kubernetes.io/tls`` secrets ``<db>-server-cert`` and
  ``<db>-client-cert`` (``ca.crt``, ``tls.crt``, ``tls.key``), made by ``certificate_secrets``.
- At each start of a pod's container its SQL Server is given a certificate from that CA naming the
  pod (``<pod>.<db>-pods.<ns>.svc`` and its ``.cluster.local`` form) and the pod's CURRENT IP, and
  forces encryption when ``spec.tls.clientTLS`` is true (mssql.conf ``forceencryption = 1``).
  Without ``spec.tls`` it makes itself a self-signed certificate, as SQL Server does when none is
  configured: clients can encrypt but cannot verify.
- Fault switches per pod (``CERTIFICATE_KINDS``): "kubedb" (the above), "foreign-ca" (the right
  names, issued by a CA no database uses) and "wrong-name" (the database's CA, but naming another
  host and not the pod's IP).

Boundaries: decisions and certificates only, in memory; no API calls and no sockets. The CA keys
never leave this module's objects. Keys are EC P-256: a pod certificate costs well under a
millisecond to make.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sandbox import kubedb_shapes as shapes
from sandbox.podview import PodKey
from sandbox.sqlserver.certs import (
    CertificateAuthority,
    ServerCertificate,
    issue_client_certificate,
    issue_pod_certificate,
    issue_server_certificate,
    make_ca,
    self_signed_certificate,
)

KUBEDB, FOREIGN_CA, WRONG_NAME = "kubedb", "foreign-ca", "wrong-name"
CERTIFICATE_KINDS = (KUBEDB, FOREIGN_CA, WRONG_NAME)


@dataclass(frozen=True)
class DatabaseTls:
    """What a database's SQL Servers get from its ``spec.tls``."""

    ca: CertificateAuthority | None
    """The CA behind ``spec.tls.issuerRef``; None: the database has no ``spec.tls``."""
    force_encryption: bool = False
    """``spec.tls.clientTLS``: mssql.conf ``forceencryption = 1``."""


NO_TLS = DatabaseTls(None)


def make_database_ca(namespace: str, db: str) -> CertificateAuthority:
    return make_ca(f"{shapes.issuer_name(db)}.{namespace}")


def certificate_secrets(
    namespace: str, db: str, replicas: int, ca: CertificateAuthority
) -> list[dict[str, Any]]:
    """``<db>-server-cert`` (every replica pod's DNS names, ``<db>``, ``<db>.<ns>.svc``) and
    ``<db>-client-cert`` (common name ``mssql``), both with the CA as ``ca.crt``."""
    dns_names = shapes.server_cert_dns_names(db, namespace, replicas)
    server = issue_server_certificate(
        ca,
        dns_names=dns_names,
        common_name=db,
        organization=shapes.KUBEDB_ORGANIZATION,
        organizational_unit=shapes.SERVER_CERT,
    )
    client = issue_client_certificate(
        ca,
        shapes.CLIENT_COMMON_NAME,
        organization=shapes.KUBEDB_ORGANIZATION,
        organizational_unit=shapes.CLIENT_CERT,
    )
    return [
        shapes.certificate_secret(
            db,
            shapes.SERVER_CERT,
            ca_pem=ca.cert_pem,
            cert_pem=server.cert_pem,
            key_pem=server.key_pem,
            common_name=db,
            dns_names=dns_names,
        ),
        shapes.certificate_secret(
            db,
            shapes.CLIENT_CERT,
            ca_pem=ca.cert_pem,
            cert_pem=client.cert_pem,
            key_pem=client.key_pem,
            common_name=shapes.CLIENT_COMMON_NAME,
            dns_names=[],
        ),
    ]


class PodCertificates:
    """Each database's TLS and each pod's fault switch; issues what a starting SQL Server serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._databases: dict[tuple[str, str], DatabaseTls] = {}
        self._kinds: dict[PodKey, str] = {}
        self._foreign_ca: CertificateAuthority | None = None

    def set_database(self, namespace: str, db: str, tls: DatabaseTls) -> None:
        with self._lock:
            self._databases[(namespace, db)] = tls

    def database(self, namespace: str, db: str | None) -> DatabaseTls:
        """The database's TLS; NO_TLS for one the sandbox did not create (a bare SQL Server)."""
        with self._lock:
            return self._databases.get((namespace, db or ""), NO_TLS)

    def set_kind(self, key: PodKey, db: str | None, kind: str) -> None:
        """Fault switch: which certificate the pod's SQL Server serves (see CERTIFICATE_KINDS)."""
        if kind not in CERTIFICATE_KINDS:
            raise ValueError(f"kind must be one of {CERTIFICATE_KINDS}, not {kind!r}")
        if kind == WRONG_NAME and self.database(key.namespace, db).ca is None:
            raise ValueError(f"{key.namespace}/{db} has no spec.tls: no CA to issue a wrong-name certificate")
        with self._lock:
            if kind == KUBEDB:
                self._kinds.pop(key, None)
            else:
                self._kinds[key] = kind

    def serving(self, key: PodKey, db: str | None, host: str) -> tuple[ServerCertificate, bool]:
        """(certificate, force encryption) for the pod's SQL Server listening on ``host`` now."""
        tls = self.database(key.namespace, db)
        with self._lock:
            kind = self._kinds.get(key, KUBEDB)
            if kind == FOREIGN_CA and self._foreign_ca is None:
                self._foreign_ca = make_ca("sandbox-foreign-ca")
            foreign = self._foreign_ca
        names = {"pod": key.name, "db": db or key.name, "namespace": key.namespace, "pod_ip": host}
        if kind == FOREIGN_CA:
            assert foreign is not None
            certificate = issue_pod_certificate(foreign, **names)
        elif tls.ca is None:
            certificate = self_signed_certificate()
        elif kind == WRONG_NAME:
            other = f"not-{key.name}.{db}-pods.{key.namespace}.svc"
            certificate = issue_server_certificate(tls.ca, dns_names=[other])
        else:
            certificate = issue_pod_certificate(tls.ca, **names)
        return certificate, tls.force_encryption
