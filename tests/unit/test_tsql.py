"""Pure tests of rotation/tsql.py: QUOTENAME-style quoting and the ALTER LOGIN text."""

from __future__ import annotations

import random

import pytest

from rotation.passwords import Password
from rotation.tsql import MAX_IDENTIFIER, alter_login_password, quote_identifier, quote_literal

# Characters that matter to T-SQL quoting, plus non-ASCII and whitespace; NUL is excluded on purpose.
TRICKY = "']\"[N;-/*\\ \t\n\r%_ßΩ中é😀"
PLAIN = "abcXYZ019"


def _random_text(rng: random.Random, *, max_length: int) -> str:
    pool = TRICKY + PLAIN
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, max_length)))


def _read_literal(text: str, start: int) -> tuple[str, int]:
    """Read an N'...' literal the way SQL Server's lexer does; return (value, index after it)."""
    assert text[start : start + 2] == "N'", text[start:]
    chars: list[str] = []
    i = start + 2
    while True:
        if i >= len(text):
            raise AssertionError(f"unterminated literal in {text!r}")
        if text[i] == "'":
            if text[i + 1 : i + 2] == "'":
                chars.append("'")
                i += 2
                continue
            return "".join(chars), i + 1
        chars.append(text[i])
        i += 1


def _read_identifier(text: str, start: int) -> tuple[str, int]:
    """Read a [bracketed] identifier the way SQL Server's lexer does; return (name, index after it)."""
    assert text[start] == "[", text[start:]
    chars: list[str] = []
    i = start + 1
    while True:
        if i >= len(text):
            raise AssertionError(f"unterminated identifier in {text!r}")
        if text[i] == "]":
            if text[i + 1 : i + 2] == "]":
                chars.append("]")
                i += 2
                continue
            return "".join(chars), i + 1
        chars.append(text[i])
        i += 1


def _parse_alter_login(statement: str) -> tuple[str, str, str | None]:
    """(login, new, old) from the statement; AssertionError if anything is out of place."""
    prefix = "ALTER LOGIN "
    assert statement.startswith(prefix)
    login, i = _read_identifier(statement, len(prefix))
    middle = " WITH PASSWORD = "
    assert statement[i : i + len(middle)] == middle
    new, i = _read_literal(statement, i + len(middle))
    if i == len(statement):
        return login, new, None
    tail = " OLD_PASSWORD = "
    assert statement[i : i + len(tail)] == tail
    old, i = _read_literal(statement, i + len(tail))
    assert i == len(statement), statement[i:]
    return login, new, old


# --- quote_identifier ----------------------------------------------------------------------------


def test_a_plain_login_name_is_wrapped_in_brackets() -> None:
    assert quote_identifier("sa") == "[sa]"


def test_a_closing_bracket_in_a_login_name_is_doubled() -> None:
    assert quote_identifier("a]b") == "[a]]b]"
    assert quote_identifier("]]") == "[]]]]]"


def test_an_opening_bracket_and_quotes_in_a_login_name_are_left_alone() -> None:
    assert quote_identifier("[x'\"") == "[[x'\"]"


def test_a_login_name_of_128_characters_is_accepted() -> None:
    name = "n" * MAX_IDENTIFIER
    assert quote_identifier(name) == f"[{name}]"


@pytest.mark.parametrize("name", ["", "n" * (MAX_IDENTIFIER + 1)])
def test_an_empty_or_too_long_login_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"1 to 128 characters, got {len(name)}"):
        quote_identifier(name)


@pytest.mark.parametrize("name", ["\x00", "sa\x00", "\x00]; DROP LOGIN sa; --"])
def test_a_login_name_with_nul_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote_identifier(name)


def test_quoted_identifiers_read_back_as_the_original_name_for_random_names() -> None:
    rng = random.Random(1433)
    for _ in range(2000):
        name = _random_text(rng, max_length=40) or "x"
        quoted = quote_identifier(name)
        assert _read_identifier(quoted, 0) == (name, len(quoted))


# --- quote_literal -------------------------------------------------------------------------------


def test_a_literal_is_an_n_prefixed_unicode_string() -> None:
    assert quote_literal("abc") == "N'abc'"
    assert quote_literal("") == "N''"


def test_a_single_quote_in_a_literal_is_doubled() -> None:
    assert quote_literal("it's") == "N'it''s'"
    assert quote_literal("'") == "N''''"
    assert quote_literal("''") == "N''''''"


def test_brackets_double_quotes_and_non_ascii_in_a_literal_are_left_alone() -> None:
    assert quote_literal('a]"b ßΩ中😀') == "N'a]\"b ßΩ中😀'"


@pytest.mark.parametrize("value", ["\x00", "a\x00b", "x'\x00"])
def test_a_literal_with_nul_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote_literal(value)


def test_unquoting_a_literal_gives_back_the_original_for_random_strings() -> None:
    rng = random.Random(20018)
    for _ in range(3000):
        value = _random_text(rng, max_length=40)
        quoted = quote_literal(value)
        # The simple inverse: strip N'...' and undouble the quotes.
        assert quoted.startswith("N'")
        assert quoted.endswith("'")
        assert quoted[2:-1].replace("''", "'") == value
        # The lexer's view: the literal ends exactly at the last character, never earlier.
        assert _read_literal(quoted, 0) == (value, len(quoted))


# --- alter_login_password ------------------------------------------------------------------------


def test_alter_login_without_old_password_is_exact() -> None:
    assert (
        alter_login_password("sa", Password("New-Pass1"), None)
        == "ALTER LOGIN [sa] WITH PASSWORD = N'New-Pass1'"
    )


def test_alter_login_with_old_password_is_exact() -> None:
    assert (
        alter_login_password("sa", Password("New-Pass1"), Password("Old-Pass1"))
        == "ALTER LOGIN [sa] WITH PASSWORD = N'New-Pass1' OLD_PASSWORD = N'Old-Pass1'"
    )


def test_alter_login_quotes_single_quotes_in_both_passwords() -> None:
    assert (
        alter_login_password("sa", Password("a'b"), Password("'; DROP LOGIN sa; --"))
        == "ALTER LOGIN [sa] WITH PASSWORD = N'a''b' OLD_PASSWORD = N'''; DROP LOGIN sa; --'"
    )


def test_alter_login_leaves_brackets_and_double_quotes_in_passwords_alone() -> None:
    assert (
        alter_login_password("app]user", Password('x]"y'), Password(']]"'))
        == "ALTER LOGIN [app]]user] WITH PASSWORD = N'x]\"y' OLD_PASSWORD = N']]\"'"
    )


def test_alter_login_keeps_non_ascii_passwords_verbatim() -> None:
    assert (
        alter_login_password("sa", Password("Ωß中é-1"), Password("😀Old'1"))
        == "ALTER LOGIN [sa] WITH PASSWORD = N'Ωß中é-1' OLD_PASSWORD = N'😀Old''1'"
    )


def test_alter_login_refuses_a_password_with_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        alter_login_password("sa", Password("New\x00"), None)
    with pytest.raises(ValueError, match="NUL"):
        alter_login_password("sa", Password("New-Pass1"), Password("Old\x00"))


def test_alter_login_refuses_an_unusable_login_name() -> None:
    with pytest.raises(ValueError):
        alter_login_password("", Password("New-Pass1"), None)


def test_alter_login_parses_back_to_its_inputs_for_random_values() -> None:
    rng = random.Random(15151)
    for _ in range(2000):
        login = _random_text(rng, max_length=30) or "sa"
        new = _random_text(rng, max_length=40)
        old = _random_text(rng, max_length=40) if rng.random() < 0.5 else None
        statement = alter_login_password(login, Password(new), None if old is None else Password(old))
        assert _parse_alter_login(statement) == (login, new, old)
