"""Durations written the way KubeDB's ``spec.timeout`` and ``spec.authSecret.rotateAfter`` are (Go's
time.ParseDuration / metav1.Duration): ``90s``, ``5m``, ``1h30m``, ``1.5h``, ``720h``. Ages may also
use days (``30d``), which Go's syntax lacks and people write. Pure logic."""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

PATTERN: Final = r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$"
AGE_PATTERN: Final = r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, what: str = "timeout", days: bool = False) -> float:
    """Seconds in ``text``; ValueError with a usable message when it is not a positive duration."""
    if not re.fullmatch(AGE_PATTERN if days else PATTERN, text or ""):
        examples = "'30d', '720h' or '1h30m'" if days else "'90s', '5m' or '1h30m'"
        raise ValueError(f"{what} {text!r} is not a duration such as {examples}")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"{what} {text!r} must be longer than zero")
    return seconds


def remaining_propagation(active_from: str | None, seconds: float, now: dt.datetime) -> float:
    """Seconds still to wait for a secret committed at ``active_from`` (RFC 3339) to reach every pod
    that mounts it; the whole period when the commit time is unknown. KubeDB's annotation has whole
    seconds, so the commit may have come up to a second after it: that second is waited too. Pure."""
    if seconds <= 0:
        return 0.0
    try:
        committed = dt.datetime.fromisoformat((active_from or "").replace("Z", "+00:00"))
    except ValueError:
        return seconds
    if committed.tzinfo is None:
        return seconds
    elapsed = (now - committed).total_seconds() - 1.0  # whole seconds: it may be a second less
    return max(0.0, min(seconds, seconds - elapsed))
