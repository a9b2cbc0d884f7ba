"""The process's freetds.conf: one section per replica, naming the CA to trust and the name to check.

pymssql 2.4.6 takes no CA or certificate-name argument; its bundled FreeTDS reads them from the file
named by ``FREETDSCONF``, at every connect (measured, docs/freetds-tls.md). So this process points
``FREETDSCONF`` once at a private file and adds a section for each endpoint it meets; a connect then
names its section as ``server``. The file is rewritten whole and swapped in with ``os.replace``, so a
concurrent connect never reads half of it. Nothing secret is written here: CA certificates are public.

FreeTDS's debug log (``TDSDUMP``, ``TDSDUMPCONFIG``, or a ``dump file`` setting) writes every batch it
sends, ALTER LOGIN with the new and the old password included, to a file (measured,
docs/freetds-tls.md). ``refuse_debug_dumps`` keeps any connection from opening while it is on; the
file this module writes never turns it on (its ``[global]`` is empty and the sections name none).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Final

from rotation import tls
from rotation.errors import UnsafeEnvironment
from rotation.tls import TlsProfile

ENV: Final = "FREETDSCONF"
DUMP_VARIABLES: Final = ("TDSDUMP", "TDSDUMPCONFIG")  # FreeTDS reads them at every connect
SAFE_DEBUGGING: Final = (
    "to see what a replica's TLS offers without sending anything secret, run "
    "`openssl s_client -connect <pod IP>:1433 -alpn tds/8.0 -servername <pod>.<db>-pods.<ns>.svc "
    "-CAfile ca.crt` (docs/freetds-tls.md, 'Debugging TLS without writing secrets')"
)


def refuse_debug_dumps() -> None:
    """Raise ``UnsafeEnvironment`` while FreeTDS's debug log is on in this process."""
    active = [name for name in DUMP_VARIABLES if name in os.environ]
    if active:
        names = " and ".join(active)
        raise UnsafeEnvironment(
            f"FreeTDS debug logging is on ({names} set in the environment of this process): it writes "
            "every statement sent to SQL Server, the new and the old password included, to a file. No "
            f"connection was opened and nothing changed; unset {names} and run again. Instead, "
            + SAFE_DEBUGGING
        )


# [global] is empty on purpose: connections that do not name one of our sections are left as they were.
HEADER: Final = "# Written by mssql-auth-rotation (rotation/freetds.py); one section per replica.\n[global]\n"


class FreeTdsConfig:
    def __init__(self, directory: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._directory = directory
        self._sections: dict[str, str] = {}

    @property
    def path(self) -> Path:
        return self._dir() / "freetds.conf"

    def section_for(self, host: str, port: int, server_name: str, profile: TlsProfile) -> str:
        """The section to connect through (``pymssql.connect(server=<it>, port=...)``)."""
        name = tls.section_name(host, port, server_name, profile)
        with self._lock:
            if name not in self._sections:
                ca_file = self._ca_file(profile)
                self._sections[name] = tls.section(name, host, port, server_name, profile, ca_file)
                self._write()
            os.environ[ENV] = str(self.path)  # once per process in effect; cheap to repeat
        return name

    def _dir(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="mssql-auth-rotation-tls-"))  # mode 0700
        return self._directory

    def _ca_file(self, profile: TlsProfile) -> str | None:
        if profile.ca_pem is None:
            return None
        path = self._dir() / f"ca-{profile.ca_digest}.pem"
        if not path.exists():
            self._replace(path, profile.ca_pem)
        return str(path)

    def _write(self) -> None:
        self._replace(self.path, HEADER + "\n".join(self._sections.values()))

    def _replace(self, path: Path, text: str) -> None:
        fd, staged = tempfile.mkstemp(dir=self._dir(), prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(staged, path)


CONFIG: Final = FreeTdsConfig()
