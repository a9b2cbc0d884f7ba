"""The retry policy every step shares: transient faults are retried until the step's own timeout,
with capped, jittered exponential backoff; nothing else is retried.

A count of retries would be the wrong budget: an API server blip or an availability-group election
at the final check can last longer than a few quick attempts, and failing a finished rotation for
it helps nobody. So the budget is time: the request's ``timeout`` (per step, as KubeDB's), measured
from the task's first attempt.

Prefect counts the attempts in its log ("Retry 3/10000 will start ..."): a filter on its task-run
logger rewrites exactly that line for these tasks, so the log says what the budget really is.

Tasks never cache or persist results (they carry no secrets, but nothing needs them later), and they
receive names and addresses only: passwords are read from Kubernetes inside the task that uses them.
"""

from __future__ import annotations

import datetime as dt
import logging
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


# Prefect 3.9.1's line (task_engine.py, TaskRunEngine.handle_retry) with its arguments: the failure's
# kind, the exception, the attempt, the retries allowed, and when the next attempt starts.
PREFECT_RETRY_LOG: Final = "Task run failed with %s: %r - Retry %s/%s will start %s"
HONEST_RETRY_LOG: Final = "Task run failed with %s: %r - retry %s will start %s (retried until the step's %s)"


class HonestRetryLog(logging.Filter):
    """Rewrite Prefect's "Retry 3/10000" for the tasks of this policy (their count is RETRIES)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == PREFECT_RETRY_LOG and isinstance(args, tuple) and len(args) == 5:
            kind, error, attempt, allowed, when = args
            if allowed == RETRIES:
                context = TaskRunContext.get()
                budget = "timeout" if context is None else f"timeout of {_budget(context.parameters):.0f}s"
                record.msg = HONEST_RETRY_LOG
                record.args = (kind, error, attempt, when, budget)
        return True


# Prefect's task-run records are logged on this logger (prefect.logging.loggers.task_run_logger).
_TASK_RUN_LOGGER = logging.getLogger("prefect.task_runs")
if not any(isinstance(f, HonestRetryLog) for f in _TASK_RUN_LOGGER.filters):
    _TASK_RUN_LOGGER.addFilter(HonestRetryLog())

RETRYING: Final[dict[str, Any]] = {
    "retries": RETRIES,
    "retry_delay_seconds": BACKOFF_S,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_only_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}
