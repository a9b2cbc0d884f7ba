"""The emulated SQL Server as the real pymssql 2.4.6 (FreeTDS 1.5) sees it over TCP; nothing is mocked.

pymssql keeps the most severe server message of a failed connect in a process-wide slot that never
resets, so a refused login in one test could show the number and text of another test's refusal.
Refused logins are therefore tried in a fresh interpreter (``login_outcome``), still with pymssql.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymssql
import pytest

from sandbox.sqlserver import InstanceState, TdsServer

SA_PASSWORD = "Sa-Passw0rd!"
APP_PASSWORD = "App-Passw0rd!"
NEW_PASSWORD = "New-Passw0rd!"
ODD_PASSWORD = "Ab1'\"]]x é ß Ω 中"  # quotes, brackets, spaces and non-ASCII BMP characters
LOGIN_FAILED = "Login failed for user '{}'."
UNAVAILABLE = (
    "Database 'master' on server 'mssql-0' is not currently available. Please retry the connection later."
)
CANNOT_ALTER = "Cannot alter the login '{}', because it does not exist or you do not have permission."
POLICY = "Password validation failed. The password does not meet the operating system policy requirements"

Address = tuple[str, int]
Connect = Callable[..., pymssql.Connection]


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def state() -> InstanceState:
    instance = InstanceState("mssql-0", SA_PASSWORD, hadr_enabled=True)
    instance.set_login("app", APP_PASSWORD)
    return instance


@pytest.fixture
def server(state: InstanceState) -> Iterator[TdsServer]:
    running = TdsServer(state, "127.0.0.1", 0)
    running.start()
    yield running
    running.stop()


def open_connection(
    address: Address,
    user: str,
    password: str,
    *,
    autocommit: bool = False,
    timeout: int = 5,
    database: str = "",
) -> pymssql.Connection:
    host, port = address
    return pymssql.connect(
        server=host, port=str(port), user=user, password=password, database=database,
        autocommit=autocommit, timeout=timeout, login_timeout=5,
    )  # fmt: skip


@pytest.fixture
def connect(server: TdsServer) -> Iterator[Connect]:
    """Open pymssql connections to the server; all are closed after the test."""
    opened: list[pymssql.Connection] = []

    def connect_to_server(
        user: str = "sa", password: str = SA_PASSWORD, *, autocommit: bool = False, **options: Any
    ) -> pymssql.Connection:
        connection = open_connection(server.address, user, password, autocommit=autocommit, **options)
        opened.append(connection)
        return connection

    yield connect_to_server
    for connection in opened:
        connection.close()


_LOGIN_PROBE = """
import json, sys, pymssql
host, port, user, password = json.loads(sys.stdin.read())
try:
    pymssql.connect(server=host, port=port, user=user, password=password, login_timeout=5).close()
    print(json.dumps(None))
except pymssql.OperationalError as error:
    number, message = error.args[0]
    print(json.dumps([number, message.decode("utf-8", "replace")]))
"""


def login_outcome(address: Address, user: str, password: str) -> tuple[int, str] | None:
    """None if pymssql logs in, else the (number, message) it reports, from a fresh process."""
    probe = subprocess.run(
        [sys.executable, "-c", _LOGIN_PROBE],
        input=json.dumps([*address, user, password]), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    result = json.loads(probe.stdout)
    return None if result is None else (result[0], result[1])


def assert_login_refused(address: Address, user: str, password: str) -> None:
    outcome = login_outcome(address, user, password)
    assert outcome is not None, f"{user} logged in with {password!r}"
    number, message = outcome
    assert (number, message.split("DB-Lib")[0]) == (18456, LOGIN_FAILED.format(user))


def literal(text: str) -> str:
    return "N'" + text.replace("'", "''") + "'"


def bracketed(name: str) -> str:
    return "[" + name.replace("]", "]]") + "]"


def alter_sql(login: str, password: str, old: str | None = None) -> str:
    sql = f"ALTER LOGIN {bracketed(login)} WITH PASSWORD = {literal(password)}"
    return sql if old is None else f"{sql} OLD_PASSWORD = {literal(old)}"


def query(connection: pymssql.Connection, sql: str) -> list[tuple[object, ...]]:
    cursor = connection.cursor()
    cursor.execute(sql)
    return list(cursor.fetchall())


def execute_error(connection: pymssql.Connection, sql: str) -> tuple[int, str]:
    """Run SQL that must fail; return the server's error number and message text."""
    with pytest.raises(pymssql.DatabaseError) as caught:
        connection.cursor().execute(sql)
    number, raw = caught.value.args
    return number, raw.decode().split("DB-Lib")[0]


# --- connecting and reading ----------------------------------------------------------------------


def test_sa_logs_in_and_gets_typed_results(connect: Connect) -> None:
    # Completing connect() also proves the ATTENTION after the SET batch was acknowledged.
    connection = connect()
    assert query(connection, "SELECT 1 AS ok, @@SERVERNAME AS name, SUSER_SNAME()") == [(1, "mssql-0", "sa")]


def test_hadr_property_and_ag_role_follow_the_instance_state(state: InstanceState, connect: Connect) -> None:
    connection = connect(autocommit=True)
    role_query = "SELECT role_desc FROM sys.dm_hadr_availability_replica_states WHERE is_local = 1"
    assert query(connection, "SELECT CAST(SERVERPROPERTY('IsHadrEnabled') AS int)") == [(1,)]
    assert query(connection, role_query) == [("PRIMARY",)]
    state.role = "SECONDARY"
    assert query(connection, role_query) == [("SECONDARY",)]


HEALTH = "SELECT synchronization_health_desc FROM sys.dm_hadr_availability_replica_states WHERE is_local = 1"
WRITE = "INSERT INTO dbo.availability_probe (at) VALUES (1)"


def test_a_secondary_is_not_healthy_until_it_has_caught_up(state: InstanceState, connect: Connect) -> None:
    connection = connect(autocommit=True)
    state.role = "SECONDARY"
    assert query(connection, HEALTH) == [("HEALTHY",)]
    state.catch_up_for(3600)
    assert query(connection, HEALTH) == [("NOT_HEALTHY",)]
    state.role = "PRIMARY"  # a primary has nothing to catch up with
    assert query(connection, HEALTH) == [("HEALTHY",)]
    state.role = "SECONDARY"
    state.catch_up_for(0)
    assert state.synchronized and query(connection, HEALTH) == [("HEALTHY",)]


def test_writes_count_once_committed_and_only_on_the_primary(state: InstanceState, connect: Connect) -> None:
    connection = connect()  # pymssql's implicit transaction: commit() ends it
    connection.cursor().execute(WRITE)
    assert state.rows_written("availability_probe") == 0  # not committed yet
    connection.commit()
    connection.cursor().execute("INSERT dbo.availability_probe VALUES (1), (2)")
    connection.rollback()
    assert state.rows_written("availability_probe") == 1
    state.role = "SECONDARY"
    number, message = execute_error(connection, WRITE)
    assert (number, message) == (
        3906,
        'Failed to update database "master" because the database is read-only.',
    )
    state.role = "RESOLVING"
    number, message = execute_error(connection, WRITE)
    assert number == 983 and "not in the PRIMARY or SECONDARY role" in message
    assert state.rows_written("availability_probe") == 1


def test_without_hadr_the_role_query_returns_no_rows() -> None:
    server = TdsServer(InstanceState("solo", SA_PASSWORD), "127.0.0.1", 0)
    server.start()
    try:
        with open_connection(server.address, "sa", SA_PASSWORD) as conn:
            assert query(conn, "SELECT CAST(SERVERPROPERTY('IsHadrEnabled') AS int) AS hadr") == [(0,)]
            sql = "select role_desc from sys.dm_hadr_availability_replica_states where is_local=1"
            assert query(conn, sql) == []
    finally:
        server.stop()


def test_uncast_serverproperty_is_raw_bytes_as_from_a_real_server(connect: Connect) -> None:
    assert query(connect(), "SELECT SERVERPROPERTY('IsHadrEnabled')") == [(b"\x01\x00\x00\x00",)]


def test_several_statements_in_one_batch_give_several_result_sets(connect: Connect) -> None:
    cursor = connect().cursor()
    cursor.execute("SET NOCOUNT ON; SELECT 1;\n  SELECT N'two' AS second ;")
    assert cursor.fetchall() == [(1,)]
    assert cursor.nextset()
    assert cursor.fetchall() == [("two",)]


def test_database_in_connect_and_use_statements(connect: Connect) -> None:
    connection = connect(database="master")
    cursor = connection.cursor()
    cursor.execute("USE master; use [tempdb]")
    assert query(connection, "SELECT DB_NAME()") == [("tempdb",)]
    assert execute_error(connection, "USE [nosuch]") == (
        911,
        "Database 'nosuch' does not exist. Make sure that the name is entered correctly.",
    )


@pytest.mark.parametrize(
    ("sql", "number", "message"),
    [
        ("DROP LOGIN app", 102, "Incorrect syntax near 'DROP'."),
        ("SELEC 1", 102, "Incorrect syntax near 'SELEC'."),
        ("SELECT * FROM sys.sql_logins", 102, "Incorrect syntax near '*'."),
        ("SELECT name FROM sys.sql_logins", 208, "Invalid object name 'sys.sql_logins'."),
        ("SELECT nosuch()", 195, "'NOSUCH' is not a recognized built-in function name."),
        (  # OLD_PASSWORD follows PASSWORD without a comma in T-SQL
            "ALTER LOGIN app WITH PASSWORD = N'Abcdefg1!', OLD_PASSWORD = N'App-Passw0rd!'",
            102,
            "Incorrect syntax near ','.",
        ),
    ],
)
def test_unsupported_sql_is_an_error_never_a_silent_success(
    connect: Connect, sql: str, number: int, message: str
) -> None:
    assert execute_error(connect(autocommit=True), sql) == (number, message)


def test_a_syntax_error_anywhere_in_a_batch_runs_none_of_it(state: InstanceState, connect: Connect) -> None:
    connection = connect(autocommit=True)
    number, _ = execute_error(connection, alter_sql("app", NEW_PASSWORD) + "; FROBNICATE")
    assert number == 102
    assert state.password_of("app") == APP_PASSWORD


def test_many_clients_at_once(state: InstanceState, server: TdsServer) -> None:
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with open_connection(server.address, "app", APP_PASSWORD) as c:
                assert query(c, f"SELECT {index} AS n, SUSER_SNAME()") == [(index, "app")]
        except BaseException as error:  # collected and re-raised in the test thread
            failures.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert failures == []


# --- logins --------------------------------------------------------------------------------------


def test_wrong_password_is_refused_with_18456(server: TdsServer) -> None:
    assert_login_refused(server.address, "sa", "wrong")


def test_unknown_login_is_refused_with_18456(server: TdsServer) -> None:
    assert_login_refused(server.address, "nobody", SA_PASSWORD)


def test_fail_next_logins_refuses_even_the_right_password_then_recovers(
    state: InstanceState, server: TdsServer
) -> None:
    state.faults.fail_next_logins = 2
    for _ in range(2):
        outcome = login_outcome(server.address, "sa", SA_PASSWORD)
        assert outcome is not None
        assert (outcome[0], outcome[1].split("DB-Lib")[0]) == (40613, UNAVAILABLE)
    assert state.faults.fail_next_logins == 0
    assert login_outcome(server.address, "sa", SA_PASSWORD) is None


# --- password changes and transactions -----------------------------------------------------------


def test_change_waits_for_commit_and_new_logins_use_the_old_password_until_then(
    state: InstanceState, server: TdsServer, connect: Connect
) -> None:
    connection = connect()  # autocommit=False: pymssql has sent BEGIN TRAN
    connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    assert login_outcome(server.address, "app", APP_PASSWORD) is None
    assert_login_refused(server.address, "app", NEW_PASSWORD)
    connection.commit()
    assert state.password_of("app") == NEW_PASSWORD
    assert login_outcome(server.address, "app", NEW_PASSWORD) is None
    assert_login_refused(server.address, "app", APP_PASSWORD)


def test_change_is_lost_when_the_connection_closes_without_commit(
    state: InstanceState, server: TdsServer, connect: Connect
) -> None:
    connection = connect()
    connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    connection.close()
    assert server.wait_idle(5), "the server still holds the closed session"
    assert state.password_of("app") == APP_PASSWORD


def test_change_is_lost_on_rollback(state: InstanceState, connect: Connect) -> None:
    connection = connect()
    connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    connection.rollback()
    connection.commit()  # the fresh transaction pymssql opened after ROLLBACK holds nothing
    assert state.password_of("app") == APP_PASSWORD


def test_change_applies_at_once_with_autocommit(
    state: InstanceState, server: TdsServer, connect: Connect
) -> None:
    connect(autocommit=True).cursor().execute(alter_sql("app", NEW_PASSWORD))
    assert state.password_of("app") == NEW_PASSWORD
    assert login_outcome(server.address, "app", NEW_PASSWORD) is None


def test_if_trancount_commit_and_rollback_forms(state: InstanceState, connect: Connect) -> None:
    connection = connect()
    cursor = connection.cursor()
    cursor.execute(alter_sql("app", "Rolled-Back1"))
    cursor.execute("IF @@TRANCOUNT > 0 ROLLBACK TRAN")
    assert state.password_of("app") == APP_PASSWORD
    cursor.execute("BEGIN TRAN")
    cursor.execute(alter_sql("app", NEW_PASSWORD))
    cursor.execute("IF @@TRANCOUNT > 0 COMMIT TRAN")
    assert state.password_of("app") == NEW_PASSWORD
    cursor.execute("IF @@TRANCOUNT > 0 COMMIT TRAN")  # no transaction left: a no-op, not an error
    assert execute_error(connection, "COMMIT TRAN") == (
        3902,
        "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
    )


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER LOGIN app WITH PASSWORD = N'New-Passw0rd!'",
        "alter login [app] with password = 'New-Passw0rd!';",
        "  ALTER\n LOGIN [app]\tWITH PASSWORD=N'New-Passw0rd!' OLD_PASSWORD=N'App-Passw0rd!' ; ",
    ],
)
def test_alter_login_spellings(state: InstanceState, connect: Connect, sql: str) -> None:
    connect(autocommit=True).cursor().execute(sql)
    assert state.password_of("app") == NEW_PASSWORD


def test_odd_login_name_and_password_survive_the_round_trip(
    state: InstanceState, server: TdsServer, connect: Connect
) -> None:
    state.set_login("we]ird 名", APP_PASSWORD)
    connect(autocommit=True).cursor().execute(alter_sql("we]ird 名", ODD_PASSWORD))
    assert state.password_of("we]ird 名") == ODD_PASSWORD
    with open_connection(server.address, "we]ird 名", ODD_PASSWORD) as connection:
        assert query(connection, "SELECT SUSER_SNAME()") == [("we]ird 名",)]
    assert_login_refused(server.address, "we]ird 名", APP_PASSWORD)


def test_literal_without_n_prefix_mangles_characters_outside_the_code_page(
    state: InstanceState, connect: Connect
) -> None:
    # As on a real server with a Latin1 collation: '...' is varchar, so Ω and 中 become '?'.
    connect(autocommit=True).cursor().execute("ALTER LOGIN app WITH PASSWORD = 'Abc1 é Ω 中'")
    assert state.password_of("app") == "Abc1 é ? ?"


@pytest.mark.parametrize(
    ("password", "number", "reason"),
    [
        ("Ab1!xyz", 15116, "too short"),
        ("Ab1!" * 32 + "x", 15156, "too long"),
        ("lowercase-only", 15118, "not complex enough"),
        ("ΩΩΩΩωωωω", 15118, "not complex enough"),
    ],
)
def test_password_policy_errors(
    state: InstanceState, connect: Connect, password: str, number: int, reason: str
) -> None:
    error = execute_error(connect(autocommit=True), alter_sql("app", password))
    assert error == (number, f"{POLICY} because it is {reason}.")
    assert state.password_of("app") == APP_PASSWORD


def test_wrong_old_password_is_15151(state: InstanceState, connect: Connect) -> None:
    error = execute_error(connect(autocommit=True), alter_sql("app", NEW_PASSWORD, old="Not-The-0ld"))
    assert error == (15151, CANNOT_ALTER.format("app"))
    assert state.password_of("app") == APP_PASSWORD


def test_non_sysadmin_cannot_alter_another_login(state: InstanceState, connect: Connect) -> None:
    connection = connect("app", APP_PASSWORD, autocommit=True)
    assert execute_error(connection, alter_sql("sa", NEW_PASSWORD, old=SA_PASSWORD)) == (
        15151,
        CANNOT_ALTER.format("sa"),
    )
    assert state.password_of("sa") == SA_PASSWORD


def test_non_sysadmin_changes_its_own_password_only_with_the_old_one(
    state: InstanceState, connect: Connect
) -> None:
    connection = connect("app", APP_PASSWORD, autocommit=True)
    assert execute_error(connection, alter_sql("app", NEW_PASSWORD)) == (15151, CANNOT_ALTER.format("app"))
    connection.cursor().execute(alter_sql("app", NEW_PASSWORD, old=APP_PASSWORD))
    assert state.password_of("app") == NEW_PASSWORD


def test_altering_an_unknown_login_is_15151(connect: Connect) -> None:
    assert execute_error(connect(autocommit=True), alter_sql("ghost", NEW_PASSWORD)) == (
        15151,
        CANNOT_ALTER.format("ghost"),
    )


# --- fault switches ------------------------------------------------------------------------------


def test_drop_after_change_commits_then_closes_unanswered(
    state: InstanceState, server: TdsServer, connect: Connect
) -> None:
    state.faults.drop_after_next_changes = 1
    connection = connect()
    connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    assert state.password_of("app") == APP_PASSWORD  # not yet: only COMMIT makes it effective
    with pytest.raises(pymssql.OperationalError, match="Unexpected EOF from the server"):
        connection.commit()
    assert state.password_of("app") == NEW_PASSWORD
    assert state.faults.drop_after_next_changes == 0
    connect(autocommit=True).cursor().execute(alter_sql("app", "Third-Passw0rd"))  # the next one is answered
    assert state.password_of("app") == "Third-Passw0rd"


def test_drop_after_change_in_autocommit_fails_the_alter_itself(
    state: InstanceState, connect: Connect
) -> None:
    state.faults.drop_after_next_changes = 1
    connection = connect(autocommit=True)
    with pytest.raises(pymssql.OperationalError) as caught:
        connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    assert caught.value.args[0] in (20017, 20047)  # unexpected EOF / DBPROCESS is dead
    assert state.password_of("app") == NEW_PASSWORD


def test_ignored_change_reports_success_but_changes_nothing(
    state: InstanceState, server: TdsServer, connect: Connect
) -> None:
    state.faults.ignore_password_changes = True
    connection = connect()
    connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    connection.commit()
    assert state.password_of("app") == APP_PASSWORD
    assert login_outcome(server.address, "app", APP_PASSWORD) is None


def test_rejected_change_fails_with_the_complexity_error_and_changes_nothing(
    state: InstanceState, connect: Connect
) -> None:
    state.faults.reject_password_changes = True
    connection = connect()
    with pytest.raises(pymssql.OperationalError) as caught:
        connection.cursor().execute(alter_sql("app", NEW_PASSWORD))
    assert caught.value.args[0] == 15118
    connection.commit()
    assert state.password_of("app") == APP_PASSWORD


def test_reply_delay_slows_every_reply(state: InstanceState, connect: Connect) -> None:
    connection = connect(autocommit=True)
    state.faults.reply_delay = 0.3
    started = time.monotonic()
    assert query(connection, "SELECT 1") == [(1,)]
    assert time.monotonic() - started >= 0.3


def test_reply_delay_beyond_the_client_timeout_times_out(state: InstanceState, connect: Connect) -> None:
    connection = connect(autocommit=True, timeout=1)
    state.faults.reply_delay = 3.0
    started = time.monotonic()
    with pytest.raises(pymssql.OperationalError, match="timed out"):
        connection.cursor().execute("SELECT 1")
    assert time.monotonic() - started < 3.0


# --- server lifecycle ----------------------------------------------------------------------------


def test_stop_closes_live_connections_and_a_restart_keeps_the_data(
    state: InstanceState, connect: Connect
) -> None:
    first = TdsServer(state, "127.0.0.1", 0)
    first.start()
    host, port = first.address
    with open_connection((host, port), "sa", SA_PASSWORD, autocommit=True) as live:
        live.cursor().execute(alter_sql("app", NEW_PASSWORD))
        first.stop()
        first.stop()  # idempotent
        with pytest.raises(pymssql.OperationalError):
            live.cursor().execute("SELECT 1")
    second = TdsServer(state, host, port)
    second.start()  # same address, free again at once
    try:
        with open_connection((host, port), "app", NEW_PASSWORD) as c:
            assert query(c, "SELECT SUSER_SNAME()") == [("app",)]
    finally:
        second.stop()


class _SignalOn(logging.Handler):
    """Sets an event when a log record's message ends with a given text."""

    def __init__(self, suffix: str) -> None:
        super().__init__(logging.DEBUG)
        self.suffix = suffix
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith(self.suffix):
            self.seen.set()


@pytest.fixture
def server_log_signal() -> Iterator[Callable[[str], threading.Event]]:
    """Events set by the server's debug log, to know which step a connection thread has reached."""
    logger = logging.getLogger("sandbox.sqlserver.server")
    handlers: list[_SignalOn] = []
    previous = logger.level
    logger.setLevel(logging.DEBUG)

    def signal(suffix: str) -> threading.Event:
        handler = _SignalOn(suffix)
        handlers.append(handler)
        logger.addHandler(handler)
        return handler.seen

    yield signal
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(previous)


def test_stop_does_not_wait_for_a_delayed_reply(
    state: InstanceState, server: TdsServer, server_log_signal: Callable[[str], threading.Event]
) -> None:
    # "spid N prelogin" is logged just before the (delayed) PRELOGIN reply.
    replying = server_log_signal(" prelogin")
    failures: list[pymssql.OperationalError] = []

    def client() -> None:
        try:
            open_connection(server.address, "sa", SA_PASSWORD).close()
        except pymssql.OperationalError as error:
            failures.append(error)

    state.faults.reply_delay = 30.0
    thread = threading.Thread(target=client)
    thread.start()
    assert replying.wait(5)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    thread.join(5)
    assert not thread.is_alive() and len(failures) == 1  # the client saw the connection close unanswered


def test_bad_packets_and_abrupt_disconnects_close_only_that_connection(
    connect: Connect, server: TdsServer
) -> None:
    host, port = server.address
    live = connect(autocommit=True)
    with socket.create_connection((host, port), timeout=5) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert garbage.recv(1) == b""  # the server hung up on it
    with socket.create_connection((host, port), timeout=5) as truncated:
        truncated.sendall(bytes((0x12, 1, 0, 200, 0, 0, 1, 0)) + b"partial")  # then vanishes mid-packet
    socket.create_connection((host, port), timeout=5).close()
    assert query(live, "SELECT 1") == [(1,)]
    assert query(connect("app", APP_PASSWORD), "SELECT 2") == [(2,)]


# --- encryption record ---------------------------------------------------------------------------


def test_an_instance_without_a_certificate_records_every_login_and_batch_as_clear_text(
    state: InstanceState, connect: Connect
) -> None:
    # The record keeps kinds and flags only, never SQL text: leak checks may scan it.
    connect(autocommit=True).cursor().execute(alter_sql("app", NEW_PASSWORD))
    assert [(login.encrypted, login.accepted) for login in state.logins] == [(False, True)]
    kinds = {(batch.kind, batch.encrypted) for batch in state.batches}
    assert kinds == {("set", False), ("alter-login", False)}
    assert state.alter_login_arrived_unencrypted()
    assert NEW_PASSWORD not in repr((state.connections, state.logins, state.batches))
