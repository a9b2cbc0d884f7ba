"""The only module that talks to SQL Server (through pymssql, over TDS, always inside TLS).

Every connection goes through its replica's freetds.conf section, which says how to encrypt (TDS 8.0
strict when certificates are verified), the CA to trust and the certificate name to check
(rotation/tls.py, rotation/freetds.py): a certificate that fails the check ends the connection
before any TDS byte, so no password is ever sent to it. pymssql's ``encryption=`` argument is never
passed: any value there overrides the section, and none of its values means strict.
No connection opens while FreeTDS's debug log is on (it would write the passwords to a file).

It turns pymssql's errors into the project's own: a rejected login is an answer (``False``), not an
error; connectivity problems are ``TransientError``; a failed TLS check is ``TlsRefused``; refusals
of ALTER LOGIN are ``PermanentError``.
pymssql keeps the last server message of the process and may report a stale error number on a failed
connect, so failures are classified from the message text first.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

import pymssql

from rotation.errors import PermanentError, TlsRefused, TransientError
from rotation.freetds import CONFIG, SAFE_DEBUGGING, refuse_debug_dumps
from rotation.params import TlsVerify
from rotation.passwords import Password
from rotation.plan import Endpoint
from rotation.tsql import alter_login_password

LOGIN_TIMEOUT_S: Final = 5
QUERY_TIMEOUT_S: Final = 15
LOGIN_REJECTED: Final = "Login failed for user"
# FreeTDS's text when no TCP connection could be made; it may follow a stale "Login failed".
UNREACHABLE: Final = "Unable to connect"
# FreeTDS's text when the connection ended before any login reply: the TLS handshake or the
# certificate check failed (FreeTDS cannot tell which), or the server hung up (docs/freetds-tls.md).
CONNECTION_FAILED: Final = "DB-Lib error message 20002"
# FreeTDS's line when the server answered the login with an error (its class tells which): a login
# that got that far went through TLS, whatever else the text says (e.g. 40613, not available).
SERVER_ANSWERED: Final = "DB-Lib error message 20018"
# pymssql repeats the server's own text only for the first failure of a process; later ones carry
# just FreeTDS's line with the server error's class. Class 14 at login is a security refusal (18456).
LOGIN_REFUSED_BY_SERVER = re.compile(r"DB-Lib error message 20018, severity 14\b")
# Availability/connection trouble: worth another try.
TRANSIENT_MARKERS: Final = (
    "Unable to connect",
    "is not currently available",
    "connection failed",
    "DBPROCESS is dead",
    "Unexpected EOF",
    "timed out",
    "Connection refused",
    "Write to the server failed",
    "Read from the server failed",
)
POLICY_ERRORS: Final = {
    15116: "it is too short for the server's password policy",
    15118: "it is not complex enough for the server's password policy",
    15156: "it is too long for the server's password policy",
}
CANNOT_ALTER: Final = 15151


def _error_text(exc: BaseException) -> tuple[int | None, str]:
    """(number, first meaningful line) from pymssql's several argument shapes."""
    args: Any = exc.args
    if args and isinstance(args[0], tuple):
        args = args[0]
    number = args[0] if len(args) >= 2 and isinstance(args[0], int) else None
    raw = args[1] if number is not None else (args[0] if args else "")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return number, text


def _summary(text: str) -> str:
    """The server's own sentence if it is there, else FreeTDS's first explanation."""
    first = text.split("DB-Lib error message")[0].strip()
    if first and not first.endswith(("b'", 'b"')):
        return first
    # A commit failure arrives as one string holding a bytes repr, with escaped newlines:
    # "Cannot commit transaction: (20017, b'DB-Lib error message ...\\nUnexpected EOF ...\\n')".
    lead = first.rsplit("(", 1)[0].strip(" :")
    lines = [line.strip(" '\"\\") for line in text.replace("\\n", "\n").splitlines()]
    explanations = [line for line in lines if line.strip(")") and "DB-Lib error message" not in line]
    cause = "; ".join(explanations[:2]) or "no message"
    return f"{lead}: {cause}" if lead else cause


def _transient(endpoint: Endpoint, action: str, text: str) -> TransientError:
    return TransientError(f"SQL Server on {endpoint} could not {action}: {_summary(text)}")


@contextlib.contextmanager
def _connect(endpoint: Endpoint, username: str, password: Password) -> Iterator[Any]:
    """A connection inside TLS, or ``PermissionError`` when the server rejects these credentials."""
    conn = open_connection(endpoint, username, password)
    try:
        yield conn
    finally:
        with contextlib.suppress(pymssql.Error):
            conn.close()


def open_connection(endpoint: Endpoint, username: str, password: Password) -> Any:
    """A pymssql connection inside TLS, which the caller closes (the sandbox's load client keeps one,
    as an application's pool does); ``PermissionError`` when the server rejects these credentials."""
    refuse_debug_dumps()
    section = CONFIG.section_for(endpoint.host, endpoint.port, endpoint.server_name, endpoint.tls)
    try:
        conn = pymssql.connect(
            server=section,  # the section says host, CA and name; pymssql's port wins over its own
            port=str(endpoint.port),
            user=username,
            password=password.reveal(),
            database="master",
            login_timeout=LOGIN_TIMEOUT_S,
            timeout=QUERY_TIMEOUT_S,
            autocommit=False,
            appname="mssql-auth-rotation",
            # no encryption=: it would override the section's (strict) encryption (module docstring)
        )
    except pymssql.Error as exc:
        _, text = _error_text(exc)
        if UNREACHABLE not in text and (LOGIN_REJECTED in text or LOGIN_REFUSED_BY_SERVER.search(text)):
            raise PermissionError(f"login as {username!r} rejected by {endpoint}") from None
        if UNREACHABLE not in text and CONNECTION_FAILED in text and SERVER_ANSWERED not in text:
            raise _tls_refused(endpoint) from None
        raise _transient(endpoint, "be reached", text) from None
    return conn


def _tls_refused(endpoint: Endpoint) -> TlsRefused:
    profile = endpoint.tls
    if not profile.strict:
        prefix = f"{endpoint} did not complete a TLS connection, so nothing was sent to it (no password)"
        return TlsRefused(f"{prefix}: it refused encryption or closed the connection")
    names = f" or does not name {endpoint.server_name}" if profile.verify is TlsVerify.VERIFY_FULL else ""
    return TlsRefused(
        f"{endpoint} did not complete a TDS 8.0 (strict) TLS connection, so nothing was sent to it (no "
        f"password). Either its certificate is not issued by the CA in {profile.ca_source}{names} (the "
        "TLS library cannot tell which), or the connection was closed during the handshake: the server is "
        "older than SQL Server 2022 (no TDS 8.0), or something on the network path blocks TLS-first "
        "connections (an attacker hoping for a fallback: there is none). Check the certificate the replica "
        "serves and its version; tls_verify=VerifyCA skips the name check (e.g. for a certificate with "
        "wildcard names only). " + SAFE_DEBUGGING[0].upper() + SAFE_DEBUGGING[1:]
    )


def synchronized(endpoint: Endpoint, username: str, password: Password) -> bool:
    """Whether this Availability Group replica reports itself HEALTHY: a secondary that has caught up
    with the primary's log, so an automatic failover may go to it."""
    try:
        with _connect(endpoint, username, password) as conn:
            cursor = conn.cursor()
            try:
                cursor.execute(
                    "SELECT CAST(synchronization_health_desc AS nvarchar(60)) "
                    "FROM sys.dm_hadr_availability_replica_states WHERE is_local = 1"
                )
                row = cursor.fetchone()
            except pymssql.Error as exc:
                raise _transient(endpoint, "report its synchronization", _error_text(exc)[1]) from None
    except PermissionError:
        raise TransientError(
            f"{endpoint} rejected the new password while reporting its synchronization"
        ) from None
    return row is not None and row[0] == "HEALTHY"


def accepts(endpoint: Endpoint, username: str, password: Password) -> bool:
    """Whether the replica lets ``username`` log in with ``password`` (18456 → False)."""
    try:
        with _connect(endpoint, username, password):
            return True
    except PermissionError:
        return False


def login_name(endpoint: Endpoint, username: str, password: Password) -> str | None:
    """``SUSER_SNAME()`` of a session opened with these credentials, or None if they are rejected."""
    try:
        with _connect(endpoint, username, password) as conn:
            cursor = conn.cursor()
            try:
                cursor.execute("SELECT SUSER_SNAME()")
                row = cursor.fetchone()
            except pymssql.Error as exc:
                raise _transient(endpoint, "answer SUSER_SNAME()", _error_text(exc)[1]) from None
            return str(row[0]) if row else None
    except PermissionError:
        return None


def change_password(
    endpoint: Endpoint,
    username: str,
    *,
    new: Password,
    old: Password,
    guard: Callable[[], None] | None = None,
) -> bool:
    """``ALTER LOGIN ... OLD_PASSWORD`` as ``username`` logged in with ``old``, committed.

    False, changing nothing, when the server rejects ``old`` (the caller decides whether the replica
    has ``new`` already). A dropped connection leaves it unknown whether the change committed: that
    is a ``TransientError``, and the caller's retry finds out by logging in again. ``guard`` runs
    once logged in, right before the statement (the rotation lock's fence): if it raises, nothing
    is sent.
    """
    try:
        with _connect(endpoint, username, old) as conn:
            if guard is not None:
                guard()  # the login may have taken seconds: the statement must still be ours to send
            try:
                conn.cursor().execute(alter_login_password(username, new, old))
                conn.commit()
            except pymssql.Error as exc:
                raise _alter_error(endpoint, username, exc) from None
    except PermissionError:
        return False
    return True


def _alter_error(endpoint: Endpoint, username: str, exc: BaseException) -> Exception:
    number, text = _error_text(exc)
    if number in POLICY_ERRORS:
        return PermanentError(
            f"{endpoint} refused the new password for {username!r}: {POLICY_ERRORS[number]}"
        )
    if number == CANNOT_ALTER:
        return PermanentError(
            f"{endpoint} refused to change the password of {username!r} (error 15151: the login does not "
            "exist, lacks permission, or the old password did not match)"
        )
    if any(marker in text for marker in TRANSIENT_MARKERS):
        return _transient(endpoint, "confirm the password change", text)
    return PermanentError(
        f"{endpoint} refused ALTER LOGIN for {username!r}: error {number}: {_summary(text)}"
    )
