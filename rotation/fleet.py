"""Fleet rotation's decisions: which databases are due, which are skipped and why, which hold an
interrupted rotation to finish; and the fleet's report. Pure logic: the facts are read elsewhere
(tasks/fleet.py).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from rotation import constants as c
from rotation.durations import parse_duration
from rotation.params import ApplyPolicy
from rotation.plan import (
    active_ops_requests,
    describe_pause,
    foreign_pause,
    is_our_pause,
    pauses,
    unsupported_auth_secret,
)


class FleetMode(StrEnum):
    ROTATE = "rotate"  # rotate what is due (and finish what was interrupted)
    RECOVER = "recover"  # only finish interrupted rotations


class Decision(StrEnum):
    DUE = "due"  # rotated now
    INTERRUPTED = "interrupted"  # an interrupted rotation, finished now
    NOT_DUE = "not due"
    SKIPPED = "skipped"  # would be due, but cannot be rotated now

    @property
    def runs(self) -> bool:
        return self in (Decision.DUE, Decision.INTERRUPTED)


class DatabaseFacts(BaseModel):
    """What the fleet read about one MSSQLServer: no secret value, only names and metadata."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    database: dict[str, Any]  # the MSSQLServer as read
    secret: str  # the auth secret's name
    secret_found: bool
    secret_keys: tuple[str, ...] = ()
    secret_annotations: dict[str, str] = {}
    ops_requests: tuple[dict[str, Any], ...] = ()  # the namespace's MSSQLServerOpsRequests
    lease_holder: str | None = None
    lease_live: bool = False  # renewed recently by its holder's clock, and its holder not ended
    unreadable: str | None = None  # why the rest could not be read (e.g. the identity has no grant)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class PlannedDatabase(BaseModel):
    namespace: str
    name: str
    decision: Decision
    reason: str
    # The credentials' age, where the auth secret could be read: since when they are in use (None:
    # unknown, so due now), when they fall due, and by which rule ("" when nothing could be read).
    credentials_since: dt.datetime | None = None
    due_at: dt.datetime | None = None
    due_rule: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def active_from(facts: DatabaseFacts) -> dt.datetime | None:
    """Since when the current credentials are in use (the secret's annotation, else the spec's)."""
    auth = (facts.database.get("spec") or {}).get("authSecret") or {}
    return parse_time(facts.secret_annotations.get(c.ANNOTATION_ACTIVE_FROM)) or parse_time(
        auth.get("activeFrom")
    )


def age_limit(database: dict[str, Any], max_age_s: float) -> tuple[float, str]:
    """The age at which the database is due, and where it comes from: its own
    ``spec.authSecret.rotateAfter`` wins over the fleet's ``max_age``."""
    rotate_after = ((database.get("spec") or {}).get("authSecret") or {}).get("rotateAfter")
    if rotate_after:
        try:
            seconds = parse_duration(str(rotate_after), what="rotateAfter", days=True)
            return seconds, "spec.authSecret.rotateAfter"
        except ValueError:
            pass  # unreadable: fall back to the fleet's limit (the plan says which one it used)
    return max_age_s, "max_age"


def is_due(database: dict[str, Any], since: dt.datetime | None, max_age_s: float, now: dt.datetime) -> bool:
    limit, _ = age_limit(database, max_age_s)
    return since is None or (now - since).total_seconds() >= limit


def interrupted(facts: DatabaseFacts) -> str | None:
    """Why the database holds an interrupted rotation of ours, or None."""
    if c.ANNOTATION_RESTART_PENDING in facts.secret_annotations:
        return "credentials committed, pods still to restart"
    if c.KEY_PASSWORD_NEXT in facts.secret_keys:
        return "a new password is staged (password.next)"
    if any(is_our_pause(p) for p in pauses(facts.database)):
        return "paused by a rotation that did not resume it"
    if facts.lease_holder is not None and not facts.lease_live:
        return f"lock left by {facts.lease_holder}, which is gone"
    return None


def human(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{minutes}m" if hours else f"{minutes}m"


def plan(
    facts: DatabaseFacts, mode: FleetMode, max_age_s: float, apply: ApplyPolicy, now: dt.datetime
) -> PlannedDatabase:
    """The decision for one database, with the reason a person reads in the fleet's report."""

    def decided(decision: Decision, reason: str) -> PlannedDatabase:
        return PlannedDatabase(
            namespace=facts.namespace,
            name=facts.name,
            decision=decision,
            reason=reason,
            **_age(facts, max_age_s),
        )

    if facts.unreadable is not None:
        return decided(Decision.SKIPPED, facts.unreadable)
    spec, status = facts.database.get("spec") or {}, facts.database.get("status") or {}
    unsupported = unsupported_auth_secret(spec.get("authSecret") or {})
    if unsupported is not None:
        return decided(Decision.SKIPPED, unsupported)
    if spec.get("halted"):
        return decided(Decision.SKIPPED, "halted")
    if not facts.secret_found:
        return decided(Decision.SKIPPED, f"auth secret {facts.secret} does not exist")
    left = interrupted(facts)
    if facts.lease_live:
        if mode is FleetMode.RECOVER and left is not None:
            # Its holder may be alive or may have just died (a fleet run killed with its rotations):
            # the rotation watches the Lease and takes over only if nobody renews it.
            return decided(
                Decision.INTERRUPTED,
                f"being rotated by {facts.lease_holder}, or interrupted ({left}); finished if its "
                "Lease stops being renewed",
            )
        return decided(Decision.SKIPPED, f"being rotated by {facts.lease_holder}")
    if left is not None:
        return decided(Decision.INTERRUPTED, f"interrupted rotation: {left}; finished now")
    if mode is FleetMode.RECOVER:
        return decided(Decision.NOT_DUE, "nothing to recover")
    other = foreign_pause(facts.database)
    if other is not None:
        return decided(Decision.SKIPPED, f"paused by another operation: {describe_pause(other)}")
    busy = active_ops_requests(list(facts.ops_requests), facts.name)
    if busy:
        return decided(Decision.SKIPPED, f"KubeDB ops request in progress: {', '.join(busy)}")
    since = active_from(facts)
    limit, source = age_limit(facts.database, max_age_s)
    if since is not None and (now - since).total_seconds() < limit:
        age = (now - since).total_seconds()
        return decided(Decision.NOT_DUE, f"credentials {human(age)} old; due at {human(limit)} ({source})")
    if apply is ApplyPolicy.IF_READY and status.get("phase") != "Ready":
        return decided(Decision.SKIPPED, f"{status.get('phase', 'Unknown')}, not Ready (apply=IfReady)")
    if since is None:
        return decided(Decision.DUE, "no kubedb.com/auth-active-from: age unknown")
    age = (now - since).total_seconds()
    return decided(Decision.DUE, f"credentials {human(age)} old; due at {human(limit)} ({source})")


def _age(facts: DatabaseFacts, max_age_s: float) -> dict[str, Any]:
    """The credentials' age fields of a plan, where the auth secret could be read."""
    if facts.unreadable is not None or not facts.secret_found:
        return {}
    since = active_from(facts)
    limit, source = age_limit(facts.database, max_age_s)
    rule = f"{source} {human(limit)}"
    due = since + dt.timedelta(seconds=limit) if since is not None else None
    return {"credentials_since": since, "due_at": due, "due_rule": rule}


NONE = "n/a"  # not "-": Prefect's UI renders table cells as markdown, and "-" as a list bullet


def credential_ages(planned: list[PlannedDatabase], now: dt.datetime) -> list[dict[str, str]]:
    """One row per database for the fleet's credential-age table, the soonest due first: databases of
    unknown age (due now), then by due date, then those whose secret could not be read."""

    def order(p: PlannedDatabase) -> tuple[int, dt.datetime, str]:
        if not p.due_rule:
            return 2, now, p.ref
        return (0, now, p.ref) if p.due_at is None else (1, p.due_at, p.ref)

    rows = []
    for p in sorted(planned, key=order):
        since, due = p.credentials_since, p.due_at
        if due is not None:
            left = (due - now).total_seconds()
            status = f"overdue by {human(-left)}" if left <= 0 else f"due in {human(left)}"
        else:
            status = "due now (age unknown)" if p.due_rule else "unknown"
        rows.append(  # the columns in the order a person scans them; a wide table scrolls in the UI
            {
                "database": p.ref,
                "status": status,
                "due": _day(due),
                "age": human(max(0.0, (now - since).total_seconds())) if since is not None else "unknown",
                "decision": p.decision.value,
                "reason": p.reason,
                "rule": p.due_rule or NONE,
                "credentials since": _day(since),
            }
        )
    return rows


def _day(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else NONE


class FleetOutcome(BaseModel):
    """What became of one planned database."""

    planned: PlannedDatabase
    outcome: str  # Successful, Failed, Skipped, planned (dry run), or "" when it does not run
    message: str = ""
    seconds: float = 0.0
    run_url: str | None = None


def _cell(text: str) -> str:
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def fleet_markdown(title: str, outcomes: list[FleetOutcome]) -> str:
    counts: dict[str, int] = {}
    for item in outcomes:
        key = item.outcome or item.planned.decision.value
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no databases"
    lines = [
        f"# {title}",
        "",
        f"{len(outcomes)} database(s): {summary}.",
        "",
        "| Database | Decision | Reason | Outcome | Seconds | Run |",
        "|---|---|---|---|---:|---|",
    ]
    for item in sorted(outcomes, key=lambda o: o.planned.ref):
        run = f"[flow run]({item.run_url})" if item.run_url else ""
        outcome = item.outcome + (f": {item.message}" if item.message else "")
        cells = (item.planned.ref, item.planned.decision.value, item.planned.reason, outcome)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + f" | {item.seconds:.1f} | {run} |")
    return "\n".join(lines) + "\n"
