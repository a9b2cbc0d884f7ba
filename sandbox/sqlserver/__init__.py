"""An emulated Microsoft SQL Server instance speaking TDS 7.4, for pymssql-based tests.

InstanceState holds what survives restarts (logins, AG role, fault switches, TLS settings, the
encryption record); TdsServer serves it over TCP. See protocol.py (wire format), encryption.py (the
PRELOGIN encryption decision), transport.py (TLS inside TDS), certs.py (CA and server
certificates) and engine.py (the T-SQL subset) for the boundaries.
"""

from sandbox.sqlserver.certs import (
    CertificateAuthority,
    ServerCertificate,
    issue_client_certificate,
    issue_pod_certificate,
    issue_server_certificate,
    make_ca,
    pod_dns_name,
    self_signed_certificate,
)
from sandbox.sqlserver.encryption import TlsMode
from sandbox.sqlserver.protocol import Encryption
from sandbox.sqlserver.server import TdsServer
from sandbox.sqlserver.state import (
    BatchRecord,
    ClearText,
    ConnectionRecord,
    Faults,
    HandshakeRecord,
    InstanceState,
    LoginRecord,
)

__all__ = [
    "BatchRecord",
    "CertificateAuthority",
    "ClearText",
    "ConnectionRecord",
    "Encryption",
    "Faults",
    "HandshakeRecord",
    "InstanceState",
    "LoginRecord",
    "ServerCertificate",
    "TdsServer",
    "TlsMode",
    "issue_client_certificate",
    "issue_pod_certificate",
    "issue_server_certificate",
    "make_ca",
    "pod_dns_name",
    "self_signed_certificate",
]
