"""How SQL Server answers the PRELOGIN ENCRYPTION option, and what that means for the connection.

Purpose: the pure decision of MS-TDS 2.2.6.5 (server side): from what the client asked, whether the
instance has a certificate and whether it forces encryption, compute the value the server puts in
its PRELOGIN reply and how much of the connection travels inside TLS.

Boundaries: no sockets, no TLS, no state; server.py acts on the decision, transport.py does the TLS.

The rules, as SQL Server applies them:
- no certificate: the answer is NOT_SUP; a client that asked ON or REQ cannot go on (refused);
- a certificate, not forced: client OFF gets OFF (only LOGIN7 is encrypted, both sides drop TLS
  right after it), client ON or REQ gets ON (everything encrypted), client NOT_SUP gets NOT_SUP
  (nothing encrypted);
- forced encryption: the answer is REQ and everything is encrypted whatever the client asked, except
  that a client that said NOT_SUP (or sent no ENCRYPTION option) is refused.
"Refused" means the server sends its PRELOGIN reply and then closes the connection.

A TDS 8.0 ("strict") client negotiates nothing here: it starts TLS before its PRELOGIN (server.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sandbox.sqlserver.protocol import Encryption


class TlsMode(enum.Enum):
    """How much of a connection is encrypted."""

    NONE = "none"  # clear text throughout
    LOGIN_ONLY = "login-only"  # the TLS handshake, LOGIN7 inside TLS, then clear text again
    FULL = "full"  # everything after the PRELOGIN exchange
    STRICT = "strict"  # TDS 8.0: TLS before any TDS byte, PRELOGIN included (no negotiation to rewrite)
    REFUSED = "refused"  # the server answers PRELOGIN, then closes the connection


@dataclass(frozen=True)
class Negotiation:
    reply: Encryption
    """The ENCRYPTION value of the server's PRELOGIN reply."""
    mode: TlsMode


def negotiate(client: Encryption | None, *, has_certificate: bool, force_encryption: bool) -> Negotiation:
    """The server's answer to a client's PRELOGIN ENCRYPTION value (None: the option was absent)."""
    if force_encryption and not has_certificate:
        raise ValueError("forcing encryption needs a server certificate")
    wants_tls = client in (Encryption.ON, Encryption.REQ)
    can_tls = client in (Encryption.OFF, Encryption.ON, Encryption.REQ)
    if not has_certificate:
        return Negotiation(Encryption.NOT_SUP, TlsMode.REFUSED if wants_tls else TlsMode.NONE)
    if force_encryption:
        return Negotiation(Encryption.REQ, TlsMode.FULL if can_tls else TlsMode.REFUSED)
    if wants_tls:
        return Negotiation(Encryption.ON, TlsMode.FULL)
    if client is Encryption.OFF:
        return Negotiation(Encryption.OFF, TlsMode.LOGIN_ONLY)
    return Negotiation(Encryption.NOT_SUP, TlsMode.NONE)
