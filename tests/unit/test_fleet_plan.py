"""Pure tests of rotation/fleet.py: which databases a fleet run rotates, skips or finishes, and why."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from rotation import constants as c
from rotation.fleet import (
    DatabaseFacts,
    Decision,
    FleetMode,
    FleetOutcome,
    PlannedDatabase,
    credential_ages,
    fleet_markdown,
    plan,
)
from rotation.params import ApplyPolicy
from rotation.plan import pause_message

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DAY = 86400.0


def _facts(
    *,
    age_days: float | None = 40,
    phase: str = "Ready",
    auth_secret: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    keys: tuple[str, ...] = (c.KEY_USERNAME, c.KEY_PASSWORD),
    annotations: dict[str, str] | None = None,
    ops: tuple[dict[str, Any], ...] = (),
    lease_holder: str | None = None,
    lease_live: bool = False,
    secret_found: bool = True,
) -> DatabaseFacts:
    notes = dict(annotations or {})
    if age_days is not None:
        notes[c.ANNOTATION_ACTIVE_FROM] = (NOW - dt.timedelta(days=age_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return DatabaseFacts(
        namespace="ns",
        name="db",
        database={
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"authSecret": {"name": "db-auth", **(auth_secret or {})}},
            "status": {"phase": phase, "conditions": conditions or []},
        },
        secret="db-auth",
        secret_found=secret_found,
        secret_keys=keys,
        secret_annotations=notes,
        ops_requests=ops,
        lease_holder=lease_holder,
        lease_live=lease_live,
    )


def _plan(
    facts: DatabaseFacts, mode: FleetMode = FleetMode.ROTATE, apply: ApplyPolicy = ApplyPolicy.IF_READY
) -> PlannedDatabase:
    return plan(facts, mode, 30 * DAY, apply, NOW)


def test_credentials_older_than_max_age_are_due_and_younger_ones_are_not() -> None:
    assert _plan(_facts(age_days=40)).decision is Decision.DUE
    younger = _plan(_facts(age_days=10))
    assert younger.decision is Decision.NOT_DUE and "10d0h old; due at 30d0h (max_age)" in younger.reason


def test_a_database_never_marked_with_an_age_is_due() -> None:
    planned = _plan(_facts(age_days=None))
    assert planned.decision is Decision.DUE and "age unknown" in planned.reason


def test_the_databases_own_rotate_after_wins_over_max_age() -> None:
    sooner = _plan(_facts(age_days=10, auth_secret={"rotateAfter": "168h"}))
    assert sooner.decision is Decision.DUE and "spec.authSecret.rotateAfter" in sooner.reason
    later = _plan(_facts(age_days=40, auth_secret={"rotateAfter": "90d"}))
    assert later.decision is Decision.NOT_DUE


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (_facts(auth_secret={"externallyManaged": True}), "externallyManaged"),
        (_facts(conditions=[{"type": "Paused", "status": "True", "message": "ops x"}]), "paused by another"),
        (
            _facts(
                ops=({"metadata": {"name": "r"}, "spec": {"type": "Restart", "databaseRef": {"name": "db"}}},)
            ),
            "ops request in progress: r (Restart, Pending)",
        ),
        (_facts(phase="Critical"), "Critical, not Ready (apply=IfReady)"),
        (_facts(lease_holder="prefect-flow-run/x", lease_live=True), "being rotated by prefect-flow-run/x"),
        (_facts(secret_found=False), "auth secret db-auth does not exist"),
    ],
)
def test_a_due_database_that_cannot_be_rotated_now_is_skipped_with_its_reason(
    facts: DatabaseFacts, reason: str
) -> None:
    planned = _plan(facts)
    assert planned.decision is Decision.SKIPPED and reason in planned.reason


def test_apply_always_rotates_a_database_that_is_not_ready() -> None:
    assert _plan(_facts(phase="Critical"), apply=ApplyPolicy.ALWAYS).decision is Decision.DUE


@pytest.mark.parametrize(
    "facts",
    [
        _facts(age_days=1, keys=(c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_PASSWORD_NEXT)),
        _facts(age_days=1, annotations={c.ANNOTATION_RESTART_PENDING: "db-auth"}),
        _facts(age_days=1, conditions=[{"type": "Paused", "status": "True", "message": pause_message("x")}]),
        _facts(age_days=1, lease_holder="prefect-flow-run/dead", lease_live=False),
    ],
    ids=["staged", "committed", "our-pause", "dead-lock"],
)
def test_an_interrupted_rotation_is_finished_in_either_mode_whatever_its_age(facts: DatabaseFacts) -> None:
    for mode in FleetMode:
        assert _plan(facts, mode).decision is Decision.INTERRUPTED


def test_recovery_leaves_due_databases_alone() -> None:
    planned = _plan(_facts(age_days=400), FleetMode.RECOVER)
    assert planned.decision is Decision.NOT_DUE and planned.reason == "nothing to recover"


def test_a_fresh_lease_over_an_interrupted_rotation_is_left_to_the_rotation_to_judge_in_recovery() -> None:
    """Its holder may be alive, or may have just died with its fleet run's process: recovery plans it,
    and the rotation takes the Lease over only after watching nobody renew it (tasks/lock.py)."""
    facts = _facts(
        keys=(c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_PASSWORD_NEXT), lease_holder="h", lease_live=True
    )
    recovered = _plan(facts, FleetMode.RECOVER)
    assert recovered.decision is Decision.INTERRUPTED
    assert "finished if its Lease stops being renewed" in recovered.reason
    assert _plan(facts, FleetMode.ROTATE).decision is Decision.SKIPPED  # a rotation never waits for it


def test_a_fresh_lease_with_nothing_interrupted_is_not_recovered() -> None:
    facts = _facts(lease_holder="h", lease_live=True)
    assert _plan(facts, FleetMode.RECOVER).decision is Decision.SKIPPED


def test_the_report_lists_every_database_with_decision_reason_outcome_and_link() -> None:
    due = _plan(_facts(age_days=40))
    other = PlannedDatabase(namespace="a", name="x|y", decision=Decision.NOT_DUE, reason="fresh")
    text = fleet_markdown(
        "Fleet rotate",
        [
            FleetOutcome(
                planned=due, outcome="Successful", seconds=5.25, run_url="http://ui/runs/flow-run/1"
            ),
            FleetOutcome(planned=other, outcome=""),
        ],
    )
    assert "2 database(s): 1 Successful, 1 not due." in text
    assert (
        "| ns/db | due |" in text and "| Successful | 5.2 | [flow run](http://ui/runs/flow-run/1) |" in text
    )
    assert "| a/x\\|y | not due | fresh |" in text
    assert text.index("a/x") < text.index("ns/db")


def test_the_credential_age_table_lists_the_soonest_due_first_with_its_rule() -> None:
    named = {
        "fresh": _facts(age_days=10),
        "overdue": _facts(age_days=40),
        "own-rule": _facts(age_days=5, auth_secret={"rotateAfter": "168h"}),  # 7 days: due in 2
        "unknown": _facts(age_days=None),
        "no-secret": _facts(secret_found=False),
    }
    planned = [
        _plan(facts.model_copy(update={"name": name, "secret": f"{name}-auth"}))
        for name, facts in named.items()
    ]

    rows = credential_ages(planned, NOW)

    assert [row["database"] for row in rows] == [
        "ns/unknown",
        "ns/overdue",
        "ns/own-rule",
        "ns/fresh",
        "ns/no-secret",
    ]
    by_name = {row["database"]: row for row in rows}
    assert by_name["ns/overdue"]["status"] == "overdue by 10d0h"
    assert by_name["ns/overdue"]["due"] == "2026-05-22 00:00 UTC" and by_name["ns/overdue"]["age"] == "40d0h"
    assert by_name["ns/own-rule"]["status"] == "due in 2d0h"
    assert by_name["ns/own-rule"]["rule"] == "spec.authSecret.rotateAfter 7d0h"
    assert by_name["ns/fresh"]["rule"] == "max_age 30d0h" and by_name["ns/fresh"]["decision"] == "not due"
    assert (
        by_name["ns/unknown"]["status"] == "due now (age unknown)" and by_name["ns/unknown"]["due"] == "n/a"
    )
    assert (
        by_name["ns/no-secret"]["status"] == "unknown"
        and "does not exist" in by_name["ns/no-secret"]["reason"]
    )
