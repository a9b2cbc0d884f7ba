"""Pure tests of rotation/durations.py: KubeDB-style timeouts in seconds."""

from __future__ import annotations

import pytest

from rotation.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("2h0m5s", 7205.0),
        ("1s500ms", 1.5),
        ("0.5s", 0.5),
    ],
)
def test_a_duration_parses_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_milliseconds_are_not_read_as_minutes() -> None:
    assert parse_duration("5ms") == pytest.approx(0.005)
    assert parse_duration("5m") == 300.0


@pytest.mark.parametrize(
    "text", ["", "5", "m", "5x", "-5m", " 5m", "5m ", "5 m", "5M", ".5h", "5.h", "1e3s", "5m\n", "1d"]
)
def test_a_malformed_duration_is_rejected_with_a_message_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["0s", "0m0s", "0.0h", "0ms"])
def test_a_zero_duration_is_rejected_with_a_message_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="longer than zero") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)
