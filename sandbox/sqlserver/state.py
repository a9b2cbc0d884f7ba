"""The persistent side of one emulated SQL Server instance: its logins, AG role and fault switches.

Purpose: what a real instance keeps on its data volume (server-level logins and their passwords),
so it survives a TdsServer stop/start, plus the switches tests flip to inject failures.

Boundaries: no protocol and no SQL parsing. Every read and write goes through one lock, because
connection threads and test threads use the same object concurrently. Login names are looked up
case-insensitively, as under SQL Server's default collation; passwords are case-sensitive.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

ROLES = ("PRIMARY", "SECONDARY", "RESOLVING")


@dataclass
class Faults:
    """Failure switches; set them from any thread, the server consumes counters under the state lock."""

    fail_next_logins: int = 0
    """The next N logins fail with transient error 40613, even with the right password."""
    drop_after_next_changes: int = 0
    """The next N password changes are committed, then the connection closes without any reply."""
    reply_delay: float = 0.0
    """Seconds to wait before sending each reply message."""
    ignore_password_changes: bool = False
    """ALTER LOGIN reports success but changes nothing."""
    reject_password_changes: bool = False
    """ALTER LOGIN fails with 15118, as on an instance with a stricter local password policy."""


@dataclass
class _Login:
    name: str
    password: str
    sysadmin: bool


class InstanceState:
    """Logins, AG role and faults of one instance; shared by all its connections and restarts."""

    def __init__(self, server_name: str, sa_password: str, *, hadr_enabled: bool = False) -> None:
        self.server_name = server_name
        self.hadr_enabled = hadr_enabled
        self.faults = Faults()
        self._lock = threading.RLock()
        self._logins: dict[str, _Login] = {}
        self._role = "PRIMARY"
        self._every_password: set[str] = set()  # for leak checks: all passwords this instance ever had
        self.set_login("sa", sa_password, sysadmin=True)

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
        """Consume one pending 'fail next login' if there is one."""
        with self._lock:
            if self.faults.fail_next_logins <= 0:
                return False
            self.faults.fail_next_logins -= 1
            return True

    def take_drop_fault(self) -> bool:
        """Consume one pending 'drop after change' if there is one."""
        with self._lock:
            if self.faults.drop_after_next_changes <= 0:
                return False
            self.faults.drop_after_next_changes -= 1
            return True
