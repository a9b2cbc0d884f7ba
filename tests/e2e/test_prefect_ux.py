"""What a Prefect user sees of the steps, on the session's Prefect test server: the shared concurrency
limit created by fleet runs that start together (and never resized by them), and retries whose log
says the step's real budget (time) rather than "Retry 3/10000"."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from rotation.errors import TransientError
from tasks._policy import RETRIES, RETRYING
from tasks.fleet import CONCURRENCY_LIMIT, ensure_concurrency_limit
from tests.fault_matrix import proves

# Each test starts without the shared limit (the fleet creates it with its own size).
pytestmark = pytest.mark.usefixtures("fresh_concurrency_limit")


def shared_limit() -> int:
    with get_client(sync_client=True) as prefect:
        return int(prefect.read_global_concurrency_limit_by_name(CONCURRENCY_LIMIT).limit)


@flow(name="fleet-runs-starting-together")
def fleet_runs_starting_together(sizes: list[int]) -> list[int]:
    """Each fleet run's first step, at the same moment (the default task runner: one thread each)."""
    futures = [ensure_concurrency_limit.submit(size) for size in sizes]
    return [future.result() for future in futures]


@proves(
    fault="several fleet runs creating the missing shared concurrency limit at the same moment",
    where="ensure-concurrency-limit against the Prefect server (its create answers 409 to all but one)",
    outcome="every run goes on with the one limit that exists; none fails on the 409",
)
def test_fleet_runs_creating_the_shared_limit_at_once_all_go_on() -> None:
    sizes = [3] * 6

    assert fleet_runs_starting_together(sizes) == sizes
    assert shared_limit() == 3


def test_an_existing_shared_limit_is_not_resized_and_the_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with get_client(sync_client=True) as prefect:
        prefect.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=CONCURRENCY_LIMIT, limit=2, active=True)
        )

    with caplog.at_level(logging.INFO):
        assert fleet_runs_starting_together([5]) == [2]

    assert shared_limit() == 2
    said = [r.getMessage() for r in caplog.records if "shares has" in r.getMessage()]
    assert said == [
        f"The concurrency limit {CONCURRENCY_LIMIT!r} that every fleet run shares has 2 slot(s); it stays "
        "so (this run's concurrency=5 only caps its own rotations). To change it: "
        f"prefect gcl update {CONCURRENCY_LIMIT} --limit N"
    ]


@dataclass(frozen=True)
class Step:
    timeout_seconds: float  # what the policy reads the budget from (a Target has it)


ATTEMPTS: list[int] = []


@task(name="blinking-step", **RETRYING)
def blinking_step(step: Step) -> int:
    ATTEMPTS.append(len(ATTEMPTS) + 1)
    if len(ATTEMPTS) < 3:
        raise TransientError("the API server could not be reached")
    return len(ATTEMPTS)


@flow(name="a-step-that-blinks")
def a_step_that_blinks() -> int:
    return blinking_step(Step(timeout_seconds=90))


def test_a_retried_step_logs_its_time_budget_not_an_attempt_count(caplog: pytest.LogCaptureFixture) -> None:
    ATTEMPTS.clear()

    with caplog.at_level(logging.INFO):
        assert a_step_that_blinks() == 3

    retries = [
        r.getMessage() for r in caplog.records if r.name == "prefect.task_runs" and "etry" in r.getMessage()
    ]
    assert len(retries) == 2, retries
    for number, line in enumerate(retries, start=1):
        assert line.startswith(
            "Task run failed with exception: TransientError('the API server could not be reached') - "
            f"retry {number} will start "
        ), line
        assert line.endswith("(retried until the step's timeout of 90s)"), line
        assert f"/{RETRIES}" not in line
