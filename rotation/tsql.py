"""T-SQL text for the statements the rotation sends. Pure logic, no I/O.

pymssql has no server-side parameters for DDL such as ALTER LOGIN, so identifiers and literals are
quoted here, the way SQL Server's QUOTENAME does: ``]`` doubles inside brackets, ``'`` doubles
inside an N'' literal.
"""

from __future__ import annotations

from rotation.passwords import Password

MAX_IDENTIFIER = 128  # sysname


def quote_identifier(name: str) -> str:
    if not name or len(name) > MAX_IDENTIFIER:
        raise ValueError(f"a SQL Server login name has 1 to {MAX_IDENTIFIER} characters, got {len(name)}")
    if "\x00" in name:
        raise ValueError("a SQL Server login name cannot contain NUL")
    return "[" + name.replace("]", "]]") + "]"


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a T-SQL string literal cannot carry NUL")
    return "N'" + value.replace("'", "''") + "'"


def alter_login_password(login: str, new: Password, old: Password | None) -> str:
    """``ALTER LOGIN [login] WITH PASSWORD = N'new' [OLD_PASSWORD = N'old']``.

    The result holds secrets: send it, never log it.
    """
    statement = f"ALTER LOGIN {quote_identifier(login)} WITH PASSWORD = {quote_literal(new.reveal())}"
    if old is not None:
        statement += f" OLD_PASSWORD = {quote_literal(old.reveal())}"
    return statement
