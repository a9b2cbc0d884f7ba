"""The private PostgreSQL server for Prefect (sandbox/postgres.py), with Debian's real server programs:
it starts, serves its database to asyncpg (Prefect's driver) on loopback with a password, runs as an
unprivileged user, and leaves no process or file behind when stopped.

These tests need Debian's ``postgresql`` package, which scripts/setup.sh installs; without it they
fail with a message that says so, rather than being skipped.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # no type information; Prefect's own PostgreSQL driver
import pytest

from sandbox.postgres import PostgresError, PostgresNotFound, PrivatePostgres, find_bindir


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    """A running process; a zombie waiting for init to reap it has stopped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def owner_uid(pid: int) -> int | None:
    """The process's real uid, or None if it has exited since it was listed (a short-lived backend)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


async def server_facts(pg: PrivatePostgres) -> dict[str, object]:
    conn = await asyncpg.connect(pg.dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT current_database() AS db, current_user AS usr,"
            " current_setting('listen_addresses') AS listen, current_setting('fsync') AS fsync,"
            " inet_server_addr()::text AS addr"
        )
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # Prefect's migrations need it
        return dict(row)
    finally:
        await conn.close()


async def refused_without_password(pg: PrivatePostgres) -> bool:
    try:
        conn = await asyncpg.connect(
            f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{pg.database}", password="", timeout=10
        )
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return True
    await conn.close()
    return False


def test_the_private_server_serves_prefects_database_to_asyncpg_and_stops_leaving_nothing() -> None:
    pg = PrivatePostgres()
    try:
        pg.start()
        assert pg.url == f"postgresql+asyncpg://prefect:{pg.password}@127.0.0.1:{pg.port}/prefect"
        assert pg.password not in pg.describe() and pg.version in pg.describe()
        assert set(pg.timings) == {"initdb", "server", "createdb"}

        facts = asyncio.run(server_facts(pg))
        assert facts == {
            "db": "prefect",
            "usr": "prefect",
            "listen": "127.0.0.1",
            "fsync": "off",
            "addr": "127.0.0.1/32",
        }
        assert asyncio.run(refused_without_password(pg)), "TCP connections must give the password"

        pids = pg.pids()
        assert len(pids) >= 3, pids  # postmaster, checkpointer, WAL writer ...
        expected_uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert {owner_uid(pid) for pid in pids} - {None} == {expected_uid}, "PostgreSQL must not run as root"
        assert (pg.socket_dir / f".s.PGSQL.{pg.port}").is_socket()
        assert pg.socket_dir.stat().st_mode & 0o077 == 0, "only the server's user may reach the socket"
        memory = pg.memory()
        # Backends and autovacuum workers come and go between two reads of the process list.
        assert memory.processes >= 3 and 0 < memory.pss_kib <= memory.rss_kib
    finally:
        pg.stop()

    assert not [pid for pid in pids if alive(pid)], "a PostgreSQL process outlived stop()"
    assert not accepts_connections(pg.port)
    assert not pg.home.exists(), "the cluster's folder was not removed"
    pg.stop()  # a second stop is harmless


def test_a_start_that_fails_leaves_no_process_and_says_where_the_log_is() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pg = PrivatePostgres(port=int(taken.getsockname()[1]))  # a port of its own choosing: no retry
        try:
            with pytest.raises(PostgresError, match=r"server log: .*postgres\.log"):
                pg.start()
            assert "could not bind" in pg.log_path.read_text()
            assert pg.pids() == []
        finally:
            pg.stop()
    assert not pg.home.exists()


def test_two_private_servers_run_side_by_side() -> None:
    with PrivatePostgres() as first, PrivatePostgres() as second:
        assert first.port != second.port and first.home != second.home
        assert accepts_connections(first.port) and accepts_connections(second.port)


def test_missing_server_programs_are_reported_with_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a system with no PostgreSQL anywhere
    with pytest.raises(PostgresNotFound, match=r"scripts/setup\.sh.*postgresql"):
        find_bindir(roots=[tmp_path])


def test_debians_server_programs_are_installed() -> None:
    """scripts/setup.sh installs them; everything above (and ``stack --db postgres``) needs them."""
    bindir = find_bindir()
    assert all((bindir / program).is_file() for program in ("initdb", "pg_ctl", "postgres"))
