"""Pure tests of rotation/report.py: condition bookkeeping with an injected clock, and the summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import pytest

from rotation.errors import PermanentError, TransientError
from rotation.report import Condition, ConditionLog, RotationReport

NEW_SECRET = "mssql-auth-2"


def _clock(readings: Iterable[float]) -> Callable[[], float]:
    """A fake monotonic clock that returns the given readings, one per call."""
    it = iter(readings)
    return lambda: next(it)


def _condition(type_: str, message: str, status: str = "True", seconds: float = 1.0) -> Condition:
    return Condition(
        type=type_,
        status=status,
        message=message,
        started_at=datetime(2024, 1, 1, tzinfo=UTC),
        seconds=seconds,
    )


# --- ConditionLog.step ---------------------------------------------------------------------------


def test_a_successful_step_is_recorded_true_with_its_message_and_exact_duration() -> None:
    log = ConditionLog(clock=_clock([100.0, 102.5]))
    with log.step("Staged", "new password staged"):
        pass
    (cond,) = log.conditions
    assert (cond.type, cond.status, cond.message, cond.seconds) == (
        "Staged",
        "True",
        "new password staged",
        2.5,
    )


def test_a_successful_step_with_the_real_clock_has_a_non_negative_duration() -> None:
    log = ConditionLog()
    with log.step("Checked", "ok"):
        pass
    assert log.conditions[0].status == "True"
    assert log.conditions[0].seconds >= 0.0


def test_a_step_records_when_it_started() -> None:
    before = datetime.now(UTC)
    log = ConditionLog(clock=_clock([0.0, 1.0]))
    with log.step("Checked", "ok"):
        pass
    assert before <= log.conditions[0].started_at <= datetime.now(UTC)


def test_a_step_failing_with_a_rotation_error_is_recorded_false_with_the_error_message() -> None:
    log = ConditionLog(clock=_clock([10.0, 13.0]))
    with pytest.raises(PermanentError, match="replica refused"), log.step("Verified", "all replicas accept"):
        raise PermanentError("replica refused")
    (cond,) = log.conditions
    assert (cond.type, cond.status, cond.message, cond.seconds) == (
        "Verified",
        "False",
        "replica refused",
        3.0,
    )


def test_a_step_failing_with_another_exception_names_its_type_in_the_message() -> None:
    log = ConditionLog(clock=_clock([0.0, 0.25]))
    with pytest.raises(ValueError, match="boom"), log.step("Staged", "staged"):
        raise ValueError("boom")
    (cond,) = log.conditions
    assert (cond.status, cond.message, cond.seconds) == ("False", "ValueError: boom", 0.25)


def test_a_failing_step_reraises_the_same_exception_object() -> None:
    log = ConditionLog(clock=_clock([0.0, 0.0]))
    error = TransientError("connection dropped")
    with pytest.raises(TransientError) as caught, log.step("Committed", "done"):
        raise error
    assert caught.value is error


def test_a_step_interrupted_by_keyboard_interrupt_is_recorded_false_and_propagates() -> None:
    log = ConditionLog(clock=_clock([0.0, 1.0]))
    with pytest.raises(KeyboardInterrupt), log.step("Restarted", "done"):
        raise KeyboardInterrupt
    assert [(cond.status, cond.message) for cond in log.conditions] == [("False", "KeyboardInterrupt: ")]


def test_steps_are_recorded_in_the_order_they_finish() -> None:
    log = ConditionLog(clock=_clock([0.0, 1.0, 1.0, 4.0, 4.0, 4.5]))
    with log.step("A", "a"):
        pass
    with log.step("B", "b"):
        pass
    with pytest.raises(RuntimeError), log.step("C", "c"):
        raise RuntimeError("x")
    assert log.types() == ["A", "B", "C"]
    assert [cond.seconds for cond in log.conditions] == [1.0, 3.0, 0.5]
    assert [cond.status for cond in log.conditions] == ["True", "True", "False"]


def test_a_step_that_learns_its_subject_records_the_name_it_gave_itself() -> None:
    log = ConditionLog(clock=_clock([0.0, 1.0, 1.0, 2.0]))
    with log.step("GetPod", "Got the next pod") as name:
        name.type, name.message = "GetPod--mssql-1", "Got pod mssql-1"
    with pytest.raises(RuntimeError), log.step("GetPod", "Got the next pod"):
        raise RuntimeError("no pod")  # failed before it knew which pod
    assert [(c.type, c.status) for c in log.conditions] == [("GetPod--mssql-1", "True"), ("GetPod", "False")]
    assert log.conditions[0].message == "Got pod mssql-1"


def test_add_records_a_condition_without_timing_a_block() -> None:
    log = ConditionLog(clock=_clock([]))  # add() must not read the clock
    log.add("Paused", "database paused")
    log.add("Failed", "gave up", status="False", seconds=7.0)
    assert [(c.type, c.status, c.message, c.seconds) for c in log.conditions] == [
        ("Paused", "True", "database paused", 0.0),
        ("Failed", "False", "gave up", 7.0),
    ]


# --- RotationReport.markdown ---------------------------------------------------------------------


def _report(conditions: list[Condition], new_secret: str | None = NEW_SECRET) -> RotationReport:
    return RotationReport(
        namespace="demo",
        database="mssql",
        outcome="Successful",
        auth_secret=new_secret,
        conditions=conditions,
    )


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and line[2].isdigit()]


def test_markdown_has_a_heading_with_the_database_and_outcome() -> None:
    text = _report([]).markdown()
    assert text.splitlines()[0] == "# RotateAuth demo/mssql: Successful"
    assert "Auth secret: `mssql-auth-2`" in text


def test_markdown_says_unchanged_when_there_is_no_new_auth_secret() -> None:
    assert "Auth secret: `unchanged`" in _report([], new_secret=None).markdown()


def test_markdown_lists_each_condition_in_order_with_number_status_and_seconds() -> None:
    conditions = [
        _condition("Checked", "database is Ready", seconds=0.123),
        _condition("Staged", "password staged", seconds=2.0),
        _condition("Verified", "replica mssql-1 refused", status="False", seconds=12.346),
    ]
    assert _table_rows(_report(conditions).markdown()) == [
        "| 1 | Checked | True | 0.12 | database is Ready |",
        "| 2 | Staged | True | 2.00 | password staged |",
        "| 3 | Verified | False | 12.35 | replica mssql-1 refused |",
    ]


def test_markdown_escapes_pipes_and_flattens_newlines_in_messages() -> None:
    text = _report([_condition("Failed", "a|b\nc || d")]).markdown()
    (row,) = _table_rows(text)
    assert row == "| 1 | Failed | True | 1.00 | a\\|b c \\|\\| d |"
    # Five cells: the message's pipes do not add columns.
    assert row.replace("\\|", "").count("|") == 6


def test_markdown_ends_with_a_newline() -> None:
    assert _report([_condition("Checked", "ok")]).markdown().endswith("|\n")
