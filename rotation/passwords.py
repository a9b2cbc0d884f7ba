"""Passwords: a wrapper that cannot be printed by accident, generation, and SQL Server's policy.

Pure logic, no I/O.
"""

from __future__ import annotations

import secrets
import string
import unicodedata
from typing import Final

MIN_LENGTH: Final = 8  # SQL Server CHECK_POLICY: error 15116 below this
MAX_LENGTH: Final = 128  # SQL Server: error 15156 above this
GENERATED_LENGTH: Final = 32  # about 190 bits from the alphabet below
# URL-unreserved symbols only: safe unquoted in ODBC/ADO connection strings, URLs and shells.
SYMBOLS: Final = "-_.~"
ALPHABET: Final = string.ascii_letters + string.digits + SYMBOLS


class Password:
    """A secret string. ``str()``/``repr()`` never show it; ``reveal()`` does, on purpose."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Password('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Password) and secrets.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Prefect may try to persist or hash task inputs; a Password must never be serialised.
        raise TypeError("a Password is never serialised; pass the name of its Kubernetes secret")


def character_classes(value: str) -> set[str]:
    """The four classes SQL Server's complexity rule counts."""
    classes = set()
    for char in value:
        if char.isupper():
            classes.add("upper")
        elif char.islower():
            classes.add("lower")
        elif char in string.digits:  # SQL Server counts 0-9 only, not other scripts' digits
            classes.add("digit")
        else:
            classes.add("symbol")
    return classes


def policy_violation(value: str) -> str | None:
    """Why SQL Server (CHECK_POLICY=ON) would refuse this password, or None if it would accept it."""
    if len(value) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    if len(value) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "it contains control characters"
    if len(character_classes(value)) < 3:
        return "it needs characters of at least three kinds: uppercase, lowercase, digits, symbols"
    return None


def generate_password(length: int = GENERATED_LENGTH) -> Password:
    """A random password with all four character classes, from ``secrets``."""
    if length < 4:
        raise ValueError("a generated password needs at least 4 characters")
    pools = (string.ascii_uppercase, string.ascii_lowercase, string.digits, SYMBOLS)
    chars = [secrets.choice(pool) for pool in pools]
    chars += [secrets.choice(ALPHABET) for _ in range(length - len(chars))]
    # Shuffle with a CSPRNG so the guaranteed classes are not always in front.
    for i in range(len(chars) - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        chars[i], chars[j] = chars[j], chars[i]
    return Password("".join(chars))
