"""The persistent side of one emulated SQL Server instance: its logins, AG role and fault switches.

Purpose: what a real instance keeps on its data volume (server-level logins and their passwords),
so it survives a TdsServer stop/start, plus the switches tests flip to inject failures, its TLS
settings (certificate, forced encryption), and a record of how each connection was encrypted.

The encryption record never holds SQL text, login names or passwords: per connection the PRELOGIN
exchange, per LOGIN7 and per SQL batch only whether it arrived inside TLS, and for a batch a short
kind ("alter-login", "select", ...). Leak checks may scan it.

The clear-text wire record is the opposite, on purpose: what a sniffer on the pod network would
have read, i.e. every LOGIN7 (its user name and its password, de-obfuscated) and every SQL batch or
RPC request that arrived OUTSIDE TLS, as text, so that a leak check can search it for passwords.
It is kept in memory only and never logged.

Memory is bounded: each list of the encryption record keeps its last ``MAX_RECORDS`` entries (the
answers "did an ALTER LOGIN / a LOGIN7 ever arrive in clear text" are kept apart and survive that);
the clear-text record keeps distinct texts only, each cut at ``MAX_CLEAR_TEXT_CHARS``, up to
``MAX_CLEAR_TEXT_TOTAL`` characters per instance, and counts what it had to leave out.

Boundaries: no wire format and no SQL parsing (it only names their enums). Every read and write
goes through one lock, because connection threads and test threads use the same object
concurrently. Login names are looked up case-insensitively, as under SQL Server's default
collation; passwords are case-sensitive.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from sandbox.sqlserver.certs import ServerCertificate
from sandbox.sqlserver.encryption import TlsMode
from sandbox.sqlserver.protocol import Encryption

ROLES = ("PRIMARY", "SECONDARY", "RESOLVING")
MAX_RECORDS = 2000  # per list of the encryption record
MAX_CLEAR_TEXT_CHARS = 4096  # one clear-text entry (a password sits near the start of its batch)
MAX_CLEAR_TEXT_TOTAL = 64 * 1024  # all clear-text entries of one instance


@dataclass
class Faults:
    """Failure switches; set them from any thread, the server consumes counters under the state lock."""

    fail_next_logins: int = 0
    """The next N logins fail with transient error 40613, even with the right password."""
    fail_logins_after: int | None = None
    """After N more logins (counted as they arrive), every login fails with 40613: the instance
    becomes unavailable at a chosen point of a client's sequence. None: off."""
    drop_after_next_changes: int = 0
    """The next N password changes are committed, then the connection closes without any reply."""
    reply_delay: float = 0.0
    """Seconds to wait before sending each reply message."""
    ignore_password_changes: bool = False
    """ALTER LOGIN reports success but changes nothing."""
    reject_password_changes: bool = False
    """ALTER LOGIN fails with 15118, as on an instance with a stricter local password policy."""
    downgrade_prelogin: bool = False
    """An on-path attacker: the clear-text PRELOGIN answer ON (or REQ) is rewritten to OFF, one byte.
    A TDS 7.x client then encrypts LOGIN7 only and sends every batch in clear text, as FreeTDS does
    even with encryption=require (the attacker relays the TLS handshake to the real replica). A TDS
    8.0 client is out of its reach: its PRELOGIN travels inside TLS."""
    refuse_strict: bool = False
    """The instance closes a connection that starts with TLS (TDS 8.0): as SQL Server 2019 and older
    do, or an on-path attacker who blocks strict connections hoping the client falls back."""


class ConnectionRecord(NamedTuple):
    """One client connection's PRELOGIN encryption exchange."""

    connection: int  # numbers every connection this instance ever had, from 1, across restarts
    client: Encryption | None  # what the client asked (None: no ENCRYPTION option)
    reply: Encryption  # what the server answered
    mode: TlsMode


class HandshakeRecord(NamedTuple):
    """A TLS handshake the server attempted; completed=False when the client broke it off."""

    connection: int
    completed: bool
    alpn: str | None = None  # the ALPN protocol agreed ("tds/8.0" for a TDS 8.0 client), if any


class LoginRecord(NamedTuple):
    connection: int
    encrypted: bool  # LOGIN7 arrived inside TLS
    accepted: bool


class BatchRecord(NamedTuple):
    """One SQL batch: its kind (see engine.classify_batch) and whether it arrived inside TLS."""

    kind: str
    encrypted: bool
    connection: int


class ClearText(NamedTuple):
    """Something that reached the instance outside TLS, decoded as a sniffer would decode it."""

    connection: int
    kind: str  # "login7-user", "login7-password", "batch" (its SQL) or "rpc" (its payload as text)
    text: str


@dataclass
class _Login:
    name: str
    password: str
    sysadmin: bool


class InstanceState:
    """Logins, AG role and faults of one instance; shared by all its connections and restarts."""

    def __init__(
        self,
        server_name: str,
        sa_password: str,
        *,
        hadr_enabled: bool = False,
        certificate: ServerCertificate | None = None,
        force_encryption: bool = False,
    ) -> None:
        self.server_name = server_name
        self.hadr_enabled = hadr_enabled
        self.faults = Faults()
        self._lock = threading.RLock()
        self._logins: dict[str, _Login] = {}
        self._role = "PRIMARY"
        self._synchronized_from = 0.0  # monotonic time from which the local replica has caught up
        self._rows_written: dict[str, int] = {}  # committed INSERTed rows by table name
        self._every_password: set[str] = set()  # for leak checks: all passwords this instance ever had
        self._certificate: ServerCertificate | None = None
        self._force_encryption = False
        self._connections_seen = 0
        self._connections: deque[ConnectionRecord] = deque(maxlen=MAX_RECORDS)
        self._handshakes: deque[HandshakeRecord] = deque(maxlen=MAX_RECORDS)
        self._login_records: deque[LoginRecord] = deque(maxlen=MAX_RECORDS)
        self._batches: deque[BatchRecord] = deque(maxlen=MAX_RECORDS)
        self._clear_login_seen = False  # kept apart from the bounded lists
        self._clear_alter_login_seen = False
        self._clear_text: dict[tuple[str, str], ClearText] = {}  # distinct (kind, text), in arrival order
        self._clear_text_chars = 0
        self._clear_text_dropped = 0
        self.configure_tls(certificate, force_encryption=force_encryption)
        self.set_login("sa", sa_password, sysadmin=True)

    # --- TLS settings (what a real instance has in its certificate store and mssql.conf) ---

    def configure_tls(self, certificate: ServerCertificate | None, *, force_encryption: bool = False) -> None:
        """Set or clear the server certificate and the force-encryption switch; new connections use them."""
        if force_encryption and certificate is None:
            raise ValueError("force_encryption needs a certificate")
        with self._lock:
            self._certificate = certificate
            self._force_encryption = force_encryption

    @property
    def certificate(self) -> ServerCertificate | None:
        with self._lock:
            return self._certificate

    @property
    def force_encryption(self) -> bool:
        with self._lock:
            return self._force_encryption

    def tls_settings(self) -> tuple[ServerCertificate | None, bool]:
        """(certificate, force_encryption), read together."""
        with self._lock:
            return self._certificate, self._force_encryption

    # --- the encryption record ---

    def record_connection(self, client: Encryption | None, reply: Encryption, mode: TlsMode) -> int:
        """Note a connection's PRELOGIN exchange; returns the connection's number."""
        with self._lock:
            self._connections_seen += 1
            number = self._connections_seen
            self._connections.append(ConnectionRecord(number, client, reply, mode))
            return number

    def new_connection_number(self) -> int:
        """A number for a connection that skipped PRELOGIN (nothing is recorded for it)."""
        with self._lock:
            self._connections_seen += 1
            return self._connections_seen

    def record_handshake(self, connection: int, *, completed: bool, alpn: str | None = None) -> None:
        with self._lock:
            self._handshakes.append(HandshakeRecord(connection, completed, alpn))

    def record_login(self, connection: int, *, encrypted: bool, accepted: bool) -> None:
        with self._lock:
            self._login_records.append(LoginRecord(connection, encrypted, accepted))
            self._clear_login_seen |= not encrypted

    def record_batch(self, connection: int, kind: str, *, encrypted: bool) -> None:
        with self._lock:
            self._batches.append(BatchRecord(kind, encrypted, connection))
            self._clear_alter_login_seen |= kind == "alter-login" and not encrypted

    def record_clear_text(self, connection: int, kind: str, text: str) -> None:
        """Keep something that arrived outside TLS (see the module's docstring for the bounds)."""
        text = text[:MAX_CLEAR_TEXT_CHARS]
        with self._lock:
            if (kind, text) in self._clear_text:
                return
            if self._clear_text_chars + len(text) > MAX_CLEAR_TEXT_TOTAL:
                self._clear_text_dropped += 1
                return
            self._clear_text[(kind, text)] = ClearText(connection, kind, text)
            self._clear_text_chars += len(text)

    @property
    def clear_text(self) -> list[ClearText]:
        """The clear-text wire record: distinct entries, first arrival first."""
        with self._lock:
            return list(self._clear_text.values())

    @property
    def clear_text_dropped(self) -> int:
        """How many distinct clear-text entries did not fit into the record."""
        with self._lock:
            return self._clear_text_dropped

    @property
    def connections(self) -> list[ConnectionRecord]:
        with self._lock:
            return list(self._connections)

    @property
    def handshakes(self) -> list[HandshakeRecord]:
        with self._lock:
            return list(self._handshakes)

    @property
    def logins(self) -> list[LoginRecord]:
        with self._lock:
            return list(self._login_records)

    @property
    def batches(self) -> list[BatchRecord]:
        with self._lock:
            return list(self._batches)

    def alter_login_arrived_unencrypted(self) -> bool:
        """Whether any ALTER LOGIN batch ever reached this instance in clear text."""
        with self._lock:
            return self._clear_alter_login_seen

    def login_arrived_unencrypted(self) -> bool:
        """Whether any LOGIN7 (it carries the password) ever reached this instance in clear text."""
        with self._lock:
            return self._clear_login_seen

    def clear_records(self) -> None:
        """Forget the encryption record and the clear-text wire record (connection numbers keep counting)."""
        with self._lock:
            self._connections.clear()
            self._handshakes.clear()
            self._login_records.clear()
            self._batches.clear()
            self._clear_login_seen = self._clear_alter_login_seen = False
            self._clear_text.clear()
            self._clear_text_chars = self._clear_text_dropped = 0

    @property
    def role(self) -> str:
        """Availability-group role of the local replica: PRIMARY, SECONDARY or RESOLVING."""
        with self._lock:
            return self._role

    @role.setter
    def role(self, value: str) -> None:
        if value not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {value!r}")
        with self._lock:
            self._role = value

    def catch_up_for(self, seconds: float) -> None:
        """From now, the local replica replays the log it missed for ``seconds`` (SYNCHRONIZING)."""
        with self._lock:
            self._synchronized_from = time.monotonic() + max(0.0, seconds)

    def synchronizing_for(self) -> float:
        """Seconds until the local replica is SYNCHRONIZED again (0: it is)."""
        with self._lock:
            return max(0.0, self._synchronized_from - time.monotonic())

    @property
    def synchronized(self) -> bool:
        return self.synchronizing_for() == 0.0

    def write_rows(self, table: str, rows: int) -> None:
        """Commit rows INSERTed into ``table`` (a load client's writes; only their count is kept)."""
        with self._lock:
            self._rows_written[table.casefold()] = self._rows_written.get(table.casefold(), 0) + rows

    def rows_written(self, table: str) -> int:
        with self._lock:
            return self._rows_written.get(table.casefold(), 0)

    def set_login(self, name: str, password: str, *, sysadmin: bool = False) -> None:
        """Create or replace a login; 'sa' is always sysadmin."""
        with self._lock:
            is_sa = name.casefold() == "sa"
            self._logins[name.casefold()] = _Login(name, password, sysadmin or is_sa)
            self._every_password.add(password)

    def every_password(self) -> set[str]:
        """Every password any login of this instance has had (tests search output for them)."""
        with self._lock:
            return set(self._every_password)

    def password_of(self, name: str) -> str | None:
        with self._lock:
            login = self._logins.get(name.casefold())
            return None if login is None else login.password

    def check_login(self, name: str, password: str) -> bool:
        with self._lock:
            login = self._logins.get(name.casefold())
            return login is not None and login.password == password

    def login_name(self, name: str) -> str | None:
        """The login's name as created (SUSER_SNAME() reports it so), or None if it does not exist."""
        with self._lock:
            login = self._logins.get(name.casefold())
            return None if login is None else login.name

    def is_sysadmin(self, name: str) -> bool:
        with self._lock:
            login = self._logins.get(name.casefold())
            return login is not None and login.sysadmin

    def apply_password_changes(self, changes: Mapping[str, str]) -> None:
        """Commit new passwords by login name; names that vanished meanwhile are skipped."""
        with self._lock:
            for name, password in changes.items():
                login = self._logins.get(name.casefold())
                if login is not None:
                    login.password = password
                    self._every_password.add(password)

    def take_login_fault(self) -> bool:
        """Whether this login fails: a pending 'fail next login', or 'fail logins after' run out."""
        with self._lock:
            if self.faults.fail_next_logins > 0:
                self.faults.fail_next_logins -= 1
                return True
            if self.faults.fail_logins_after is None:
                return False
            if self.faults.fail_logins_after > 0:
                self.faults.fail_logins_after -= 1
                return False
            return True

    def take_drop_fault(self) -> bool:
        """Consume one pending 'drop after change' if there is one."""
        with self._lock:
            if self.faults.drop_after_next_changes <= 0:
                return False
            self.faults.drop_after_next_changes -= 1
            return True
