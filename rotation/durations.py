"""Durations written the way KubeDB's ``spec.timeout`` is (Go's time.ParseDuration): ``90s``, ``5m``,
``1h30m``, ``1.5h``. Pure logic."""

from __future__ import annotations

import re
from typing import Final

PATTERN: Final = r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError with a usable message when it is not a positive duration."""
    if not re.fullmatch(PATTERN, text or ""):
        raise ValueError(f"timeout {text!r} is not a duration such as '90s', '5m' or '1h30m'")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"timeout {text!r} must be longer than zero")
    return seconds
