"""A private PostgreSQL server for Prefect: its own cluster in a temporary folder, on a free loopback port.

Used by ``python -m sandbox stack --db postgres`` (``make stack PREFECT_DB=postgres``) and meant for
scripts that compare Prefect's server on SQLite and on PostgreSQL::

    with PrivatePostgres() as pg:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg.url   # postgresql+asyncpg://prefect:…@127.0.0.1:…
        ...                                                   # start `prefect server start` with env

It runs Debian's server binaries (package ``postgresql``, installed by scripts/setup.sh) from
``/usr/lib/postgresql/<version>/bin``, or ``initdb`` found on PATH elsewhere. It neither uses nor
touches a system cluster (Debian's ``main`` on port 5432): ``initdb`` makes a new cluster in the
folder, the server listens on 127.0.0.1 only and puts its unix socket in that folder, and ``stop()``
shuts it down (``pg_ctl stop -m fast``) and removes the folder.

Access: one role, ``prefect`` (the cluster's superuser, which Prefect's migrations need for the
``pg_trgm`` extension), with a random password; TCP connections must give it (SCRAM). The unix socket
trusts its callers, but only the server's own user and root can reach it (folder and socket mode 0700).

PostgreSQL refuses to run as root. Run as root, the cluster belongs to the unprivileged ``postgres``
user that Debian's package creates, and every PostgreSQL program runs as that user; otherwise it runs
as the current user.

Durability is off by default (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off): this is a
throw-away sandbox whose data goes with the folder, so a crash of the machine loses nothing worth
keeping. ``durable=True`` keeps PostgreSQL's defaults, as a production server would run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple
from urllib.parse import quote

from sandbox.controlplane import free_port

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER_WHEN_ROOT = "postgres"  # created by Debian's postgresql-common
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
PORT_ATTEMPTS = 3  # a free port can be taken by someone else between our probe and the server's bind
PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb")
NOT_FOUND_HINT = (
    "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found in /usr/lib/postgresql/*/bin "
    "or on PATH: run scripts/setup.sh (it installs Debian's postgresql package), "
    "or `apt-get install postgresql`"
)


class PostgresNotFound(RuntimeError):
    """PostgreSQL's server programs, or the user to run them as, are missing."""


class PostgresError(RuntimeError):
    """A PostgreSQL program failed."""


class Memory(NamedTuple):
    """Resident memory of a cluster's processes, summed (kibibytes)."""

    processes: int
    rss_kib: int  # counts shared memory (shared_buffers) once per process that touched it
    pss_kib: int  # shared pages divided among the processes that share them: the fair total


def find_bindir(roots: Iterable[Path] = (DEBIAN_ROOT,)) -> Path:
    """The folder of PostgreSQL's server programs: Debian's newest version, else ``initdb`` on PATH."""
    versions: list[tuple[tuple[int, ...], Path]] = []
    for root in roots:
        for bindir in root.glob("*/bin"):
            if all((bindir / program).is_file() for program in PROGRAMS) and re.fullmatch(
                r"\d+(\.\d+)*", bindir.parent.name
            ):
                versions.append((tuple(int(part) for part in bindir.parent.name.split(".")), bindir))
    if versions:
        return max(versions)[1]
    on_path = shutil.which("initdb")
    if on_path:
        bindir = Path(on_path).resolve().parent
        if all((bindir / program).is_file() for program in PROGRAMS):
            return bindir
    raise PostgresNotFound(NOT_FOUND_HINT)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie that nobody reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own; ``start()`` it, hand ``url`` to Prefect, ``stop()`` it.

    ``port=0`` picks a free loopback port. ``settings`` adds lines to postgresql.conf (for example
    ``{"max_connections": "300"}``).
    """

    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mssql-rotation-pg-")))
    port: int = 0
    database: str = "prefect"
    user: str = "prefect"
    durable: bool = False
    settings: Mapping[str, str] = field(default_factory=dict)
    bindir: Path | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)
    """Seconds each step of ``start()`` took: ``initdb``, ``server`` (pg_ctl start), ``createdb``."""
    version: str = field(default="", init=False)
    _postmaster: int = field(default=0, init=False, repr=False)

    # -- addresses -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """For Prefect's ``PREFECT_API_DATABASE_CONNECTION_URL`` (SQLAlchemy with asyncpg)."""
        return f"postgresql+asyncpg://{self._credentials}@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The same server as a libpq URL, for ``psql`` or ``asyncpg.connect``."""
        return f"postgresql://{self._credentials}@127.0.0.1:{self.port}/{self.database}"

    @property
    def masked_url(self) -> str:
        """``url`` with the password hidden, for printing."""
        return self.url.replace(f"{self._credentials}@", f"{quote(self.user, safe='')}:***@")

    @property
    def _credentials(self) -> str:
        return f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        """The unix socket's folder (``host`` for libpq and asyncpg); no password needed there."""
        return self.home

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    def describe(self) -> str:
        return (
            f"PostgreSQL {self.version} at {self.masked_url} "
            f"(private cluster in {self.home}, socket folder {self.socket_dir})"
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> PrivatePostgres:
        """initdb, start the server (waiting until it accepts connections), create the database."""
        self.bindir = self.bindir or find_bindir()
        owner = self._owner()
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        if owner is not None:
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        self.version = self._version()
        try:
            began = time.monotonic()
            self._initdb(owner)
            self.timings["initdb"] = time.monotonic() - began
            began = time.monotonic()
            self._start_server()
            self.timings["server"] = time.monotonic() - began
            began = time.monotonic()
            self._run(
                "createdb",
                ["-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user, self.database],
            )
            self.timings["createdb"] = time.monotonic() - began
        except BaseException:
            self.stop(keep_home=True)  # its log stays for the error message's reader
            raise
        return self

    def stop(self, *, keep_home: bool = False) -> None:
        """Fast shutdown (clients disconnected, no waiting for them); then the folder is removed.

        Safe to call more than once, and after a ``start()`` that failed half-way.
        """
        pids = self.pids()
        if self._pid_file_exists():
            try:
                self._run("pg_ctl", ["stop", "-D", str(self.data_dir), "-m", "fast", "-w"], STOP_TIMEOUT_S)
            except (PostgresError, subprocess.TimeoutExpired):
                with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", ["stop", "-D", str(self.data_dir), "-m", "immediate", "-w"])
        for pid in pids:  # only if pg_ctl could not stop them: never leave a server behind
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._postmaster = 0
        if not keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- processes ------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """The postmaster and its children (checkpointer, WAL writer, backends ...), while running."""
        if not self._postmaster or not _alive(self._postmaster):
            return []
        return [self._postmaster, *_children(self._postmaster)]

    def memory(self) -> Memory:
        """Resident memory of ``pids()`` now, from /proc/PID/smaps_rollup."""
        rss = pss = count = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
                fields = dict(line.split(":", 1) for line in rollup)
                rss += int(fields["Rss"].split()[0])
                pss += int(fields["Pss"].split()[0])
                count += 1
        return Memory(count, rss, pss)

    # -- steps ----------------------------------------------------------------------------------
    def _owner(self) -> pwd.struct_passwd | None:
        """The user the cluster runs as when we are root; None means the current user."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        except KeyError:
            raise PostgresNotFound(
                f"running as root, PostgreSQL needs an unprivileged user to run as and there is no "
                f"{SERVER_USER_WHEN_ROOT!r} user (Debian's postgresql package creates it): {NOT_FOUND_HINT}"
            ) from None

    def _version(self) -> str:
        out = self._run("postgres", ["--version"])
        match = re.search(r"\(PostgreSQL\) (\S+)", out)
        return match.group(1) if match else out.strip()

    def _initdb(self, owner: pwd.struct_passwd | None) -> None:
        pwfile = self.home / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                "initdb",
                [
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",  # the socket's folder is reachable by its owner and root only
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",  # a throw-away cluster: no need to flush its files to disk
                ],
            )
        finally:
            pwfile.unlink(missing_ok=True)
        lines = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "'" + str(self.socket_dir).replace("'", "''") + "'",
            "unix_socket_permissions": "0700",
        }
        if not self.durable:
            lines |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        lines |= dict(self.settings)
        with (self.data_dir / "postgresql.conf").open("a") as conf:  # keeps its owner's ownership
            conf.write("\n# sandbox/postgres.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in lines.items())

    def _start_server(self) -> None:
        chosen = self.port
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = chosen or free_port()
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._run(
                    "pg_ctl",
                    [
                        "start",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_path),
                        "-o",
                        f"-p {self.port}",
                        "-w",
                        "-t",
                        str(START_TIMEOUT_S),
                    ],
                    START_TIMEOUT_S + 10,
                )
            except PostgresError:
                with self.log_path.open("rb") as log:
                    log.seek(log_start)
                    port_taken = b"could not bind" in log.read()
                if chosen or not port_taken or attempt == PORT_ATTEMPTS:
                    raise
                continue
            self._postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            return

    def _pid_file_exists(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def _run(self, program: str, args: list[str], timeout: float = START_TIMEOUT_S) -> str:
        """One of PostgreSQL's programs, as the cluster's user; its output, or PostgresError."""
        assert self.bindir is not None
        owner = self._owner()
        # The PG* variables of our caller (PGHOST, PGPASSWORD ...) must not steer these programs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["HOME"] = str(self.home)  # no ~/.pgpass or ~/.psqlrc of whoever runs us
        result = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.home,  # the server's user may not be allowed into our working directory
            env=env,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"(server log: {self.log_path})"
            )
        return result.stdout
