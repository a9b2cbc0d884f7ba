"""The ``rotate-mssql-fleet`` flow: one schedule for every database.

Discover the MSSQLServers → plan each (due, not due, skipped with its reason, or an interrupted
rotation to finish) → rotate the due ones, each as its own ``rotate-mssql-auth`` flow run (its own page,
logs and artifact), at most ``concurrency`` at a time and never more than the concurrency limit that
every fleet run shares → report every database. ``mode=recover`` only finishes interrupted rotations:
its short schedule, and the trigger on a crashed rotation, make the fleet heal itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from typing import Annotated, Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as prefect_flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_UI_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.rotate_auth import rotate_mssql_auth
from rotation.cancellation import request_stop, stopping
from rotation.durations import AGE_PATTERN, parse_duration
from rotation.errors import InvalidRequest, RotationError, RotationInProgress
from rotation.fleet import (
    Decision,
    FleetMode,
    FleetOutcome,
    PlannedDatabase,
    credential_ages,
    fleet_markdown,
    plan,
)
from rotation.params import Apply, ApplyPolicy, Namespace, Timeout, TlsVerify, TlsVerifyMode
from tasks.aftermath import after_fleet_stopped
from tasks.fleet import CONCURRENCY_LIMIT, discover_databases, ensure_concurrency_limit

# On SIGTERM (the run cancelled, its pod evicted) the rotations in flight get this long to stop at a
# step boundary, roll back or resume, and unlock, before the fleet run gives up on them: well within
# the 30 s a process worker waits before SIGKILL (and the Job's terminationGracePeriodSeconds).
STOP_GRACE_S = 20.0
CREDENTIAL_AGE_KEY = "fleet-credential-age"  # the dry run's table artifact
SLOT_LEASE_S = 60.0  # how long a dead rotation keeps its slot of the shared limit (the server's minimum)

Namespaces = Annotated[
    list[Namespace],
    Field(
        title="Namespaces",
        description=(
            "Namespaces whose MSSQLServers are considered. Empty: every namespace the identity may list."
        ),
    ),
]
LabelSelector = Annotated[
    str,
    Field(
        title="Label selector",
        description="Only MSSQLServers with these labels, e.g. team=payments,env!=dev. Empty: all.",
        max_length=1024,
    ),
]
MaxAge = Annotated[
    str,
    Field(
        title="Maximum age",
        description=(
            "A database is due when its credentials are at least this old (kubedb.com/auth-active-from), "
            "e.g. 30d or 720h; its own spec.authSecret.rotateAfter wins."
        ),
        pattern=AGE_PATTERN,
    ),
]
Mode = Annotated[
    FleetMode,
    Field(
        title="Mode",
        description=(
            "rotate: what is due (and what was interrupted). recover: only finish interrupted rotations."
        ),
    ),
]
Concurrency = Annotated[
    int,
    Field(
        title="Concurrency",
        description=(
            "At most this many rotations at once in this run. The limit 'mssql-auth-rotation' that every "
            "fleet run shares is created with this size when missing and never resized (prefect gcl update)."
        ),
        ge=1,
        le=50,
    ),
]
DryRun = Annotated[bool, Field(title="Dry run", description="Plan and report only; change nothing.")]
OneDatabase = Annotated[
    str,
    Field(
        title="One database (optional)",
        description=(
            "Only this database, as namespace/name, or a crashed rotation's run name "
            "('rotate-auth namespace/name'), as the recovery trigger passes it. Empty: all."
        ),
        max_length=600,
    ),
]


def fleet_run_name() -> str:
    """What the run covers, for the UI's lists: 'fleet rotate: demo, payments [team=a]'."""
    p = prefect_flow_run.parameters
    one = str(p.get("database") or "").split()  # 'rotate-auth ns/name' from the trigger: ns/name
    scope = one[-1] if one else ", ".join(p.get("namespaces") or []) or "every namespace"
    selector = f" [{p['label_selector']}]" if p.get("label_selector") else ""
    dry = " (dry run)" if p.get("dry_run") else ""
    return f"fleet {p.get('mode', 'rotate')}{dry}: {scope}{selector}"


class FleetReport(BaseModel):
    mode: FleetMode
    dry_run: bool
    outcomes: list[FleetOutcome]

    @property
    def failed(self) -> list[FleetOutcome]:
        return [o for o in self.outcomes if o.outcome == "Failed"]


@flow(
    name="rotate-mssql-fleet",
    description="Rotate every MSSQLServer that is due (or finish interrupted rotations), each as its own "
    "rotate-mssql-auth run, under one concurrency limit shared by every fleet run.",
    validate_parameters=True,
    flow_run_name=fleet_run_name,
    # Its rotations run in its process: when it dies without its `finally`, so do they; the process
    # that supervised it releases what they left (tasks/aftermath.py).
    on_crashed=[after_fleet_stopped],
    on_cancellation=[after_fleet_stopped],
)
def rotate_mssql_fleet(
    namespaces: Namespaces = [],  # noqa: B006 (Prefect copies parameters; the UI needs a list default)
    label_selector: LabelSelector = "",
    max_age: MaxAge = "30d",
    mode: Mode = FleetMode.ROTATE,
    concurrency: Concurrency = 5,
    dry_run: DryRun = False,
    database: OneDatabase = "",
    timeout: Timeout = "5m",
    apply: Apply = ApplyPolicy.IF_READY,
    tls_verify: TlsVerifyMode = TlsVerify.VERIFY_FULL,
) -> FleetReport:
    """Rotate the fleet's MSSQLServers that are due.

    Args:
        namespaces: Namespaces whose MSSQLServers are considered; empty: every namespace it may list.
        label_selector: Only MSSQLServers with these labels; empty: all.
        max_age: A database is due when its credentials are this old; spec.authSecret.rotateAfter wins.
        mode: rotate (what is due, and what was interrupted) or recover (only interrupted rotations).
        concurrency: At most this many rotations at once in this run. The limit 'mssql-auth-rotation'
            that every fleet run shares is created with this size when missing and never resized
            (prefect gcl update mssql-auth-rotation --limit N).
        dry_run: Plan and report only, and publish every database's credential age and due date as the
            table artifact fleet-credential-age, soonest due first.
        database: Only this database (namespace/name); the recovery trigger passes a crashed run's name.
        timeout: Each rotation's timeout per step.
        apply: IfReady skips databases that are not Ready; Always rotates them anyway.
        tls_verify: How each replica's certificate is checked (see rotate-mssql-auth).
    """
    age_s = _max_age_seconds(max_age)
    facts = discover_databases(namespaces, label_selector, _database_ref(database))
    now = dt.datetime.now(dt.UTC)
    planned = [plan(f, mode, age_s, apply, now) for f in facts]
    log = get_run_logger()
    log.info("%d database(s): %d to rotate", len(planned), sum(p.decision.runs for p in planned))
    if dry_run:
        outcomes = [FleetOutcome(planned=p, outcome="planned" if p.decision.runs else "") for p in planned]
        _publish_credential_ages(planned, now)
    else:
        outcomes = _rotate(planned, mode, max_age, concurrency, timeout, apply, tls_verify)
    report = FleetReport(mode=mode, dry_run=dry_run, outcomes=outcomes)
    title = f"Fleet {mode.value}{' (dry run)' if dry_run else ''}"
    create_markdown_artifact(key=f"rotate-fleet-{mode.value}", markdown=fleet_markdown(title, outcomes))
    if report.failed:
        raise RotationError(
            f"{len(report.failed)} of {len(outcomes)} database(s) failed: "
            + "; ".join(f"{o.planned.ref}: {o.message}" for o in report.failed)
        )
    return report


def _publish_credential_ages(planned: list[PlannedDatabase], now: dt.datetime) -> None:
    """Every database's credential age and due date, soonest first: "which are overdue" at a glance."""
    overdue = sum(p.due_at is not None and p.due_at <= now for p in planned)
    create_table_artifact(
        key=CREDENTIAL_AGE_KEY,
        table=credential_ages(planned, now),
        description=f"Credential age of {len(planned)} database(s) on {now:%Y-%m-%d %H:%M} UTC, "
        f"soonest due first: {overdue} overdue",
    )


def _rotate(
    planned: list[PlannedDatabase],
    mode: FleetMode,
    max_age: str,
    slots: int,
    timeout: str,
    apply: ApplyPolicy,
    tls_verify: TlsVerify,
) -> list[FleetOutcome]:
    """Each due database as its own flow run; one database's failure never stops the others."""
    if mode is FleetMode.ROTATE:  # recovery takes no slot (see rotate_database)
        ensure_concurrency_limit(slots)
    due = [p for p in planned if p.decision.runs]
    outcomes = {p.ref: FleetOutcome(planned=p, outcome="") for p in planned if not p.decision.runs}
    progress = cast(
        UUID, create_progress_artifact(progress=0.0, description=f"{len(due)} rotation(s) to run")
    )
    runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=max(1, min(slots, len(due))))
    with runner:
        futures: list[PrefectFuture[FleetOutcome]] = [
            runner.submit(
                rotate_database,
                {
                    "planned": p,
                    "mode": mode,
                    "max_age": max_age,
                    "timeout": timeout,
                    "apply": apply,
                    "tls_verify": tls_verify,
                },
            )
            for p in due
        ]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                outcome = future.result()
                outcomes[outcome.planned.ref] = outcome
                update_progress_artifact(
                    progress, progress=100.0 * done / len(due), description=f"{done} of {len(due)} done"
                )
        except BaseException:
            # Prefect's SIGTERM reaches this (main) thread only; the rotations in the pool's threads
            # would go on until the SIGKILL cut them off mid-step. Each stops at its next step
            # instead (rolling back what is not committed), resumes and unlocks; none starts anew.
            request_stop("its fleet run is being stopped (cancelled, or its process terminated)")
            _wait_for(futures, STOP_GRACE_S)
            raise
    if not due:
        update_progress_artifact(progress, progress=100.0, description="nothing to rotate")
    return [outcomes[p.ref] for p in planned]


def _run_url(flow_run_id: Any) -> str | None:
    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and flow_run_id else None


@task(name="rotate-database", cache_policy=NO_CACHE, persist_result=False)
def rotate_database(
    planned: PlannedDatabase,
    mode: FleetMode,
    max_age: str,
    timeout: str,
    apply: ApplyPolicy,
    tls_verify: TlsVerify,
) -> FleetOutcome:
    """One database's rotation as its own flow run, once a slot of the shared limit is free.

    The child runs without Prefect's flow heartbeat: it would emit one event in a run this short, and
    the engine joins its thread, which sleeps in whole seconds, adding up to 1 s to every database
    (measured: docs/performance.md). The fleet run keeps its own heartbeat; a child's liveness is its
    Kubernetes Lease, which recovery judges.
    """
    if stopping():  # queued when the fleet run was told to stop: never started
        return FleetOutcome(
            planned=planned, outcome="Skipped", message="not started: the fleet run was stopped"
        )
    with (
        _slot(mode),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        start = time.monotonic()
        state = rotate_mssql_auth(
            namespace=planned.namespace,
            database=planned.name,
            timeout=timeout,
            apply=apply,
            tls_verify=tls_verify,
            max_age=max_age if planned.decision is Decision.DUE else None,  # checked again under its lock
            finish_only=mode is FleetMode.RECOVER,
            return_state=True,
        )
        seconds = time.monotonic() - start
    url = _run_url(state.state_details.flow_run_id)
    if state.is_completed():
        report = state.result()
        return FleetOutcome(planned=planned, outcome=report.outcome, seconds=seconds, run_url=url)
    error = state.result(raise_on_failure=False)
    if isinstance(error, RotationInProgress):  # another run has it: not this fleet's failure
        return FleetOutcome(
            planned=planned, outcome="Skipped", message=str(error), seconds=seconds, run_url=url
        )
    message = str(error) if isinstance(error, BaseException) else str(state.message)
    return FleetOutcome(planned=planned, outcome="Failed", message=message, seconds=seconds, run_url=url)


def _slot(mode: FleetMode) -> contextlib.AbstractContextManager[object]:
    """A slot of the limit every fleet run shares, for a rotation; none for recovery.

    The limit only caps how many rotations run at once (each database's Lease already allows one at
    a time). Recovery must not wait for it: the rotations of a fleet run that was killed keep their
    slots until their slot lease expires (``SLOT_LEASE_S``, the shortest the server accepts, instead
    of Prefect's 300 s; its repossessor then frees them within 15 s). And losing a slot's lease (the
    Prefect API out for a few renewals) must never interrupt a rotation mid-step, so a failed renewal
    is only logged (Prefect's default with ``strict`` would inject a cancellation into the rotation's
    thread).
    """
    if mode is FleetMode.RECOVER:
        return contextlib.nullcontext()
    return concurrency(
        CONCURRENCY_LIMIT,
        occupy=1,
        strict=True,
        lease_duration=SLOT_LEASE_S,
        raise_on_lease_renewal_failure=False,
    )


def _wait_for(futures: list[PrefectFuture[FleetOutcome]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for future in futures:
        future.wait(timeout=max(0.0, deadline - time.monotonic()))


def _max_age_seconds(max_age: str) -> float:
    try:
        return parse_duration(max_age, what="max_age", days=True)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _database_ref(value: str) -> str:
    """``namespace/name`` from a reference or from a rotation's run name ('rotate-auth ns/name')."""
    ref = value.strip().split()[-1] if value.strip() else ""
    if ref and ref.count("/") != 1:
        raise InvalidRequest(f"database {value!r} is not namespace/name")
    return ref
