"""The retry policy every step shares: only transient faults are retried, with jittered backoff.

Tasks never cache or persist results (they carry no secrets, but nothing needs them later), and they
receive names and addresses only: passwords are read from Kubernetes inside the task that uses them.
"""

from __future__ import annotations

from typing import Any, Final

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from rotation.errors import TransientError

RETRIES: Final = 4


def retry_only_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: retry a ``TransientError``, nothing else."""
    try:
        state.result(raise_on_failure=True)
    except TransientError:
        return True
    except BaseException:
        return False
    return False


RETRYING: Final[dict[str, Any]] = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=0.25),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_only_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}
