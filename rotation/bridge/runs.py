"""The bridge's Prefect side: start a deployment's flow run exactly once per idempotency key, find
it again by that key, read its state (and, for a run that crashed, the error it logged), cancel it.
A Prefect API that cannot be reached (down,
restarting, 5xx) is ``PrefectUnavailable``: the bridge leaves the request as it is and comes back."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL
from prefect.states import Cancelled, Cancelling

NOT_STARTED = frozenset({"SCHEDULED"})  # no infrastructure yet: cancelled outright
CAUSE_MAX: Final = 300  # characters of a crash's cause that reach the request
LOGS_READ: Final = 200  # a crashed run's logs looked at (it logs few before it dies)


class PrefectUnavailable(RuntimeError):
    """The Prefect API did not answer."""


@dataclass(frozen=True)
class RunState:
    type: str  # SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED, CANCELLING, CANCELLED, ...
    message: str


class Runs:
    def __init__(self, deployment: str) -> None:
        self.deployment = deployment  # "<flow name>/<deployment name>"
        self._deployment_id: UUID | None = None

    def _client(self) -> SyncPrefectClient:
        return get_client(sync_client=True)

    def start(self, parameters: dict[str, Any], key: str, tags: list[str]) -> str:
        """The flow run for ``key``: created now, or the one an earlier call (any bridge) created."""
        try:
            with self._client() as prefect:
                if self._deployment_id is None:
                    self._deployment_id = _deployment_id(prefect, self.deployment)
                run = prefect.create_flow_run_from_deployment(
                    self._deployment_id, parameters=parameters, idempotency_key=key, tags=tags
                )
        except PrefectUnavailable:
            raise
        except Exception as exc:  # httpx errors, 5xx
            raise PrefectUnavailable(
                f"Prefect could not start a run of {self.deployment}: {_why(exc)}"
            ) from None
        return str(run.id)

    def find(self, key: str) -> str | None:
        """The run created for ``key``, if any."""
        try:
            with self._client() as prefect:
                runs = prefect.read_flow_runs(
                    flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])),
                    limit=1,
                )
        except Exception as exc:
            raise PrefectUnavailable(f"Prefect could not look up flow runs: {_why(exc)}") from None
        return str(runs[0].id) if runs else None

    def state(self, run_id: str) -> RunState:
        try:
            with self._client() as prefect:
                state = prefect.read_flow_run(UUID(run_id)).state
        except ObjectNotFound:
            return RunState("DELETED", f"flow run {run_id} no longer exists in Prefect")
        except Exception as exc:
            raise PrefectUnavailable(f"Prefect could not read flow run {run_id}: {_why(exc)}") from None
        if state is None:
            return RunState("SCHEDULED", "")
        return RunState(state.type.value, state.message or "")

    def crash_cause(self, run_id: str) -> str | None:
        """Why a crashed run died, from what it logged (the infrastructure's state message says only
        that the process exited) and its deployment's pull steps; None when nothing tells."""
        try:
            with self._client() as prefect:
                run = prefect.read_flow_run(UUID(run_id))
                logs = prefect.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])), limit=LOGS_READ
                )
                steps = prefect.read_deployment(run.deployment_id).pull_steps if run.deployment_id else None
        except Exception as exc:
            raise PrefectUnavailable(
                f"Prefect could not read the logs of flow run {run_id}: {_why(exc)}"
            ) from None
        return cause_of([(entry.level, entry.message) for entry in logs], steps or [])

    def cancel(self, run_id: str, state: RunState, reason: str) -> None:
        """Stop the run: one that has not started is cancelled outright; a running one is asked to
        stop (its worker signals it, and the flow's ``finally`` still resumes the database)."""
        new: State[Any] = (
            Cancelled(message=reason) if state.type in NOT_STARTED else Cancelling(message=reason)
        )
        try:
            with self._client() as prefect:
                prefect.set_flow_run_state(UUID(run_id), new, force=True)
        except Exception as exc:
            raise PrefectUnavailable(f"Prefect could not cancel flow run {run_id}: {_why(exc)}") from None

    @staticmethod
    def url(run_id: str) -> str | None:
        ui = PREFECT_UI_URL.value()
        return f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui else None


def _deployment_id(prefect: SyncPrefectClient, name: str) -> UUID:
    try:
        return prefect.read_deployment_by_name(name).id
    except ObjectNotFound:
        raise PrefectUnavailable(
            f"Prefect has no deployment {name}: deploy it (prefect deploy --all) or pass --deployment"
        ) from None


def cause_of(logs: Sequence[tuple[int, str]], pull_steps: Sequence[dict[str, Any]]) -> str | None:
    """A crashed run's cause, from its logs (level, message; oldest first) and its deployment's pull
    steps. The last exception it logged (a traceback's final line, never its frames); else a pull step
    that started and never finished (Prefect keeps that error only in the worker's output), named
    with its inputs as the deployment stores them (templates, never resolved values); else the last
    error's first line. One line, at most CAUSE_MAX characters."""
    errors = [message for level, message in logs if level >= logging.ERROR]
    tracebacks = [m for m in errors if "Traceback (most recent call last)" in m]
    if tracebacks:
        return _line(f"the run's error: {_last_line(tracebacks[-1])}")
    started = [m.removeprefix(STEP_STARTED) for _, m in logs if m.startswith(STEP_STARTED)]
    finished = sum(
        1 for _, m in logs if m.startswith("Deployment step ") and m.endswith(" completed successfully")
    )
    if len(started) > finished:
        failed = len(started) - 1
        step = pull_steps[failed] if failed < len(pull_steps) else {}
        inputs: dict[str, Any] = next(iter(step.values()), {}) or {}
        shown = ", ".join(f"{key}: {value}" for key, value in inputs.items() if key not in ("id", "requires"))
        return _line(
            f"it died in its deployment's pull step {started[-1]}{f' ({shown})' if shown else ''}, "
            "before the flow started (Prefect leaves that step's error in the worker's log)"
        )
    return (
        _line(f"the run's error: {errors[-1].strip().splitlines()[0]}")
        if errors and errors[-1].strip()
        else None
    )


STEP_STARTED: Final = "Executing deployment step: "  # Prefect's log line before each pull step


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _line(text: str) -> str:
    return text if len(text) <= CAUSE_MAX else text[: CAUSE_MAX - 1] + "…"


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
