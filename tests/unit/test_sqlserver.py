"""Pure tests of rotation/sqlserver.py's error classification helpers (no connection is made)."""

from __future__ import annotations

import pymssql
import pytest

from rotation.sqlserver import LOGIN_REFUSED_BY_SERVER, _error_text, _summary

LOGIN_FAILED = (
    b"Login failed for user 'sa'.DB-Lib error message 20018, severity 14:\n"
    b"General SQL Server error: Check messages from the SQL Server\n"
    b"DB-Lib error message 20002, severity 9:\nAdaptive Server connection failed (10.0.0.1)\n"
)
CANNOT_ALTER = (
    b"Cannot alter the login 'sa', because it does not exist or you do not have permission."
    b"DB-Lib error message 20018, severity 16:\n"
    b"General SQL Server error: Check messages from the SQL Server\n"
)
COMMIT_FAILED = (
    "Cannot commit transaction: (20017, b'DB-Lib error message 20017, severity 9:\\n"
    "Unexpected EOF from the server\\n')"
)
CHATTER_ONLY = (
    "DB-Lib error message 20018, severity 14:\n"
    "General SQL Server error: Check messages from the SQL Server\n"
    "DB-Lib error message 20002, severity 9:\n"
)


# --- _error_text ---------------------------------------------------------------------------------


def test_a_login_failure_wrapped_in_a_tuple_gives_its_number_and_decoded_text() -> None:
    exc = pymssql.OperationalError((18456, LOGIN_FAILED))
    assert _error_text(exc) == (18456, LOGIN_FAILED.decode())


def test_a_flat_number_and_message_give_the_same_result_as_the_wrapped_shape() -> None:
    assert _error_text(pymssql.OperationalError(18456, LOGIN_FAILED)) == (18456, LOGIN_FAILED.decode())


def test_a_cannot_alter_error_gives_15151_and_its_text() -> None:
    number, text = _error_text(pymssql.OperationalError((15151, CANNOT_ALTER)))
    assert number == 15151
    assert text.startswith("Cannot alter the login 'sa'")


def test_a_single_string_commit_failure_has_no_number_and_keeps_the_whole_text() -> None:
    assert _error_text(pymssql.OperationalError(COMMIT_FAILED)) == (None, COMMIT_FAILED)


def test_undecodable_bytes_are_replaced_rather_than_raising() -> None:
    number, text = _error_text(pymssql.OperationalError((50000, b"bad \xff byte")))
    assert number == 50000
    assert text == "bad \ufffd byte"


def test_an_error_without_arguments_gives_no_number_and_empty_text() -> None:
    assert _error_text(pymssql.OperationalError()) == (None, "")


def test_a_non_string_single_argument_is_turned_into_text() -> None:
    assert _error_text(pymssql.InterfaceError(20009)) == (None, "20009")


# --- _summary ------------------------------------------------------------------------------------


def test_the_summary_of_a_login_failure_is_the_servers_sentence() -> None:
    assert _summary(LOGIN_FAILED.decode()) == "Login failed for user 'sa'."


def test_the_summary_of_a_cannot_alter_error_drops_the_db_lib_chatter() -> None:
    assert _summary(CANNOT_ALTER.decode()) == (
        "Cannot alter the login 'sa', because it does not exist or you do not have permission."
    )


def test_the_summary_of_db_lib_chatter_alone_is_its_second_line() -> None:
    assert _summary(CHATTER_ONLY) == "General SQL Server error: Check messages from the SQL Server"


def test_the_summary_of_a_single_line_is_that_line() -> None:
    assert _summary("  Unable to connect: Adaptive Server is unavailable  ") == (
        "Unable to connect: Adaptive Server is unavailable"
    )


def test_the_summary_of_nothing_says_so() -> None:
    assert _summary("") == "no message"
    assert _summary(" \n \n") == "no message"


def test_the_summary_of_a_commit_failure_starts_with_the_drivers_sentence() -> None:
    assert _summary(COMMIT_FAILED).startswith("Cannot commit transaction")


def test_the_summary_of_a_commit_failure_names_the_cause_and_is_not_cut_inside_a_bytes_repr() -> None:
    summary = _summary(COMMIT_FAILED)
    assert "Unexpected EOF from the server" in summary
    assert not summary.endswith("b'")


# --- LOGIN_REFUSED_BY_SERVER ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "DB-Lib error message 20018, severity 14:\nGeneral SQL Server error",
        "Login failed.DB-Lib error message 20018, severity 14:",
        "DB-Lib error message 20018, severity 14",
    ],
)
def test_a_class_14_server_message_at_login_is_a_refused_login(text: str) -> None:
    assert LOGIN_REFUSED_BY_SERVER.search(text)


@pytest.mark.parametrize(
    "text",
    [
        "DB-Lib error message 20018, severity 17:\nGeneral SQL Server error",
        "DB-Lib error message 20018, severity 16:",
        "DB-Lib error message 20018, severity 140:",
        "DB-Lib error message 20002, severity 14:",
        "DB-Lib error message 200180, severity 14:",
        "",
    ],
)
def test_other_severities_and_messages_are_not_a_refused_login(text: str) -> None:
    assert not LOGIN_REFUSED_BY_SERVER.search(text)
