"""Pure tests of the SQL Server emulator's wire format (protocol.py) and T-SQL interpreter (engine.py)."""

from __future__ import annotations

import struct

import pytest

from sandbox.sqlserver import InstanceState
from sandbox.sqlserver import protocol as tds
from sandbox.sqlserver.engine import (
    BatchOutcome,
    Session,
    SqlError,
    character_classes,
    check_password_policy,
    execute_batch,
    tokenize,
)

ODD_PASSWORD = "Ab1'\"]]é ß Ω 中"


# --- protocol ------------------------------------------------------------------------------------


def test_password_obfuscation_round_trips_non_ascii_text() -> None:
    raw = tds.obfuscate_password(ODD_PASSWORD)
    assert raw != ODD_PASSWORD.encode("utf-16-le")
    assert tds.deobfuscate_password(raw) == ODD_PASSWORD


def test_password_obfuscation_matches_the_specified_byte_transform() -> None:
    # 'a' is 0x61 0x00 in UTF-16-LE; swapping nibbles gives 0x16 0x00, XOR 0xA5 gives 0xB3 0xA5.
    assert tds.obfuscate_password("a") == bytes((0xB3, 0xA5))


def test_login7_round_trips_every_field() -> None:
    login = tds.Login7(
        tds_version=tds.TDS_74, packet_size=4096, host_name="host", user_name="app]x",
        password=ODD_PASSWORD, app_name="pymssql=2.4.6", server_name="127.0.0.1",
        library_name="DB-Library", language="", database="master",
    )  # fmt: skip
    assert tds.parse_login7(tds.encode_login7(login)) == login


def test_login7_with_a_field_outside_the_record_is_rejected() -> None:
    good = bytearray(tds.encode_login7(tds.Login7(tds.TDS_74, 4096, "h", "u", "p", "a", "s", "l", "", "")))
    struct.pack_into("<HH", good, tds.LOGIN7_FIXED_SIZE + 4, 60000, 10)  # user name offset
    with pytest.raises(tds.ProtocolError):
        tds.parse_login7(bytes(good))


def test_prelogin_reply_says_encryption_is_not_supported() -> None:
    options = tds.parse_prelogin(tds.build_prelogin_reply(version=(16, 0, 4135)))
    assert options[tds.PRELOGIN_ENCRYPTION] == bytes((tds.ENCRYPT_NOT_SUP,))
    assert options[tds.PRELOGIN_VERSION][:2] == bytes((16, 0))


def test_header_with_unknown_packet_type_is_rejected() -> None:
    with pytest.raises(tds.ProtocolError):
        tds.parse_header(bytes((0x99, 1, 0, 8, 0, 0, 1, 0)))


def test_long_reply_is_split_into_packets_with_eom_only_on_the_last() -> None:
    packets = tds.encode_packets(tds.PacketType.REPLY, b"x" * 1000, packet_size=512, spid=51)
    headers = [tds.parse_header(p[: tds.HEADER_SIZE]) for p in packets]
    assert [h.length for h in headers] == [512, 8 + 1000 - 504]
    assert [h.is_last for h in headers] == [False, True]
    assert b"".join(p[tds.HEADER_SIZE :] for p in packets) == b"x" * 1000


def test_sql_batch_text_follows_the_all_headers_block() -> None:
    assert tds.parse_sql_batch(tds.encode_sql_batch("SELECT N'中'")) == "SELECT N'中'"


def test_done_token_carries_status_and_64_bit_row_count() -> None:
    token = tds.token_done(tds.DoneStatus.MORE | tds.DoneStatus.COUNT, row_count=3)
    assert token == struct.pack("<BHHQ", 0xFD, 0x11, 0, 3)


def test_row_of_int_and_nvarchar_and_nulls() -> None:
    columns = [tds.Column("n", tds.SqlType.INT), tds.Column("s", tds.SqlType.NVARCHAR)]
    assert tds.token_row(columns, [7, "é"]) == b"\xd1" + b"\x04\x07\x00\x00\x00" + b"\x02\x00\xe9\x00"
    assert tds.token_row(columns, [None, None]) == b"\xd1\x00\xff\xff"


# --- lexer and policy ----------------------------------------------------------------------------


def test_lexer_undoes_doubled_quotes_and_brackets() -> None:
    tokens = tokenize("ALTER LOGIN [a]]b] WITH PASSWORD = N'it''s' -- comment\n/* a /* nested */ one */")
    assert [t.value for t in tokens] == ["ALTER", "LOGIN", "a]b", "WITH", "PASSWORD", "=", "it's"]


def test_literal_without_n_prefix_loses_characters_outside_the_code_page() -> None:
    (token,) = tokenize("'é Ω 中'")
    assert token.value == "é ? ?"


def test_unclosed_string_is_error_105() -> None:
    with pytest.raises(SqlError) as caught:
        tokenize("SELECT N'abc")
    assert caught.value.number == 105


@pytest.mark.parametrize(
    ("password", "number"),
    [
        ("Ab1!xyz", 15116),  # 7 characters
        ("Ab1!" * 32 + "x", 15156),  # 129 characters
        ("abcdefgh1", 15118),  # lower + digit
        ("ΩΩΩΩωωωω", 15118),  # upper + lower, non-ASCII
        ("中文中文中文12", 15118),  # uncased letters count as symbols: symbol + digit
    ],
)
def test_password_policy_rejections(password: str, number: int) -> None:
    error = check_password_policy(password)
    assert error is not None and error.number == number and error.severity == 16


@pytest.mark.parametrize("password", ["Abcdefg1", "Ab1!" * 32, "ßßßßΩΩΩΩ1", "中文中文Abcd", ODD_PASSWORD])
def test_password_policy_acceptances(password: str) -> None:
    assert check_password_policy(password) is None


def test_character_classes_treat_letters_by_case_and_uncased_as_symbols() -> None:
    assert character_classes("Ωß中7") == {"upper", "lower", "symbol", "digit"}


# --- engine --------------------------------------------------------------------------------------


@pytest.fixture
def state() -> InstanceState:
    instance = InstanceState("mssql-0", "Sa-Passw0rd!", hadr_enabled=True)
    instance.set_login("app", "App-Passw0rd!")
    return instance


def run(state: InstanceState, session: Session, sql: str) -> BatchOutcome:
    return execute_batch(state, session, sql)


def errors(outcome: BatchOutcome) -> list[int]:
    return [r.error.number for r in outcome.results if r.error is not None]


def test_change_inside_a_transaction_waits_for_commit(state: InstanceState) -> None:
    session = Session("sa")
    run(state, session, "BEGIN TRAN; ALTER LOGIN app WITH PASSWORD = N'New-Passw0rd!'")
    assert state.password_of("app") == "App-Passw0rd!"
    run(state, session, "IF @@TRANCOUNT > 0 COMMIT TRAN")
    assert state.password_of("app") == "New-Passw0rd!"


def test_nested_transactions_commit_at_the_outermost_level(state: InstanceState) -> None:
    session = Session("sa")
    run(
        state, session, "BEGIN TRAN BEGIN TRANSACTION ALTER LOGIN app WITH PASSWORD = N'New-Passw0rd!' COMMIT"
    )
    assert state.password_of("app") == "App-Passw0rd!"
    run(state, session, "COMMIT TRAN")
    assert state.password_of("app") == "New-Passw0rd!"


def test_rollback_discards_and_a_second_rollback_is_error_3903(state: InstanceState) -> None:
    session = Session("sa")
    run(state, session, "BEGIN TRAN; ALTER LOGIN app WITH PASSWORD = N'New-Passw0rd!'; ROLLBACK")
    assert state.password_of("app") == "App-Passw0rd!"
    assert errors(run(state, session, "ROLLBACK TRAN")) == [3903]


def test_old_password_is_checked_against_the_sessions_own_uncommitted_change(state: InstanceState) -> None:
    session = Session("app")
    run(
        state,
        session,
        "BEGIN TRAN ALTER LOGIN app WITH PASSWORD = N'Second-Pw1' OLD_PASSWORD = N'App-Passw0rd!'",
    )
    outcome = run(state, session, "ALTER LOGIN app WITH PASSWORD = N'Third-Pw1' OLD_PASSWORD = N'Second-Pw1'")
    assert errors(outcome) == []


def test_syntax_error_anywhere_runs_nothing_in_the_batch(state: InstanceState) -> None:
    outcome = run(state, Session("sa"), "ALTER LOGIN app WITH PASSWORD = N'New-Passw0rd!'; FROBNICATE")
    assert errors(outcome) == [102]
    assert outcome.results[0].error is not None
    assert outcome.results[0].error.message == "Incorrect syntax near 'FROBNICATE'."
    assert state.password_of("app") == "App-Passw0rd!"


def test_statement_error_does_not_stop_the_rest_of_the_batch(state: InstanceState) -> None:
    outcome = run(state, Session("sa"), "ALTER LOGIN nobody WITH PASSWORD = N'Abcdefg1'; SELECT 1")
    assert errors(outcome) == [15151]
    assert outcome.results[1].result_set is not None
    assert outcome.results[1].result_set.rows == ((1,),)


def test_select_items_take_aliases_in_all_three_spellings(state: InstanceState) -> None:
    outcome = run(state, Session("sa"), "SELECT 1 AS a, 2 b, c = 3, @@SERVERNAME AS [name]")
    result = outcome.results[0].result_set
    assert result is not None
    assert [c.name for c in result.columns] == ["a", "b", "c", "name"]
    assert result.rows == ((1, 2, 3, "mssql-0"),)


def test_cast_to_nvarchar_without_length_truncates_to_30(state: InstanceState) -> None:
    outcome = run(state, Session("sa"), "SELECT CAST(N'" + "x" * 40 + "' AS nvarchar)")
    result = outcome.results[0].result_set
    assert result is not None and result.rows == (("x" * 30,),)


def test_drop_fault_fires_only_when_a_change_becomes_effective(state: InstanceState) -> None:
    state.faults.drop_after_next_changes = 1
    session = Session("sa")
    assert not run(
        state, session, "BEGIN TRAN ALTER LOGIN app WITH PASSWORD = N'New-Passw0rd!'"
    ).drop_connection
    assert run(state, session, "COMMIT TRAN SELECT 1").drop_connection
    assert state.password_of("app") == "New-Passw0rd!"
    assert state.faults.drop_after_next_changes == 0
