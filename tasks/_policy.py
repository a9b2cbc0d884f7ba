"""The retry policy every step shares: transient faults are retried until the step's own timeout,
with capped, jittered exponential backoff; nothing else is retried.

A count of retries would be the wrong budget: an API server blip or an availability-group election
at the final check can last longer than a few quick attempts, and failing a finished rotation for
it helps nobody. So the budget is time: the request's ``timeout`` (per step, as KubeDB's), measured
from the task's first attempt.

Tasks never cache or persist results (they carry no secrets, but nothing needs them later), and they
receive names and addresses only: passwords are read from Kubernetes inside the task that uses them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext

from rotation.errors import TransientError

# The attempt count is not the budget (time is, see retry_only_transient); it only has to be out of reach.
RETRIES: Final = 10_000
# 0.25 s doubling, capped at 5 s: quick for a blip, at most one request per ~5 s for a long outage.
BACKOFF_S: Final = [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
DEFAULT_BUDGET_S: Final = 60.0  # for a task whose parameters carry no timeout (reporting)


def _budget(parameters: dict[str, Any]) -> float:
    for value in parameters.values():
        seconds = getattr(value, "timeout_seconds", None)
        if isinstance(seconds, int | float):
            return float(seconds)
    return DEFAULT_BUDGET_S


def retry_only_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: retry a ``TransientError`` while the step's time lasts."""
    try:
        state.result(raise_on_failure=True)
    except TransientError:
        pass
    except BaseException:
        return False
    else:
        return False
    context = TaskRunContext.get()
    budget = _budget(context.parameters if context is not None else {})
    started = task_run.start_time or dt.datetime.now(dt.UTC)
    return (dt.datetime.now(dt.UTC) - started).total_seconds() < budget


RETRYING: Final[dict[str, Any]] = {
    "retries": RETRIES,
    "retry_delay_seconds": BACKOFF_S,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_only_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}
