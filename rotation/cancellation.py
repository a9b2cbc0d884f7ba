"""A process-wide "stop" that every rotation in the process sees at its next step boundary.

Prefect stops a flow run's process with SIGTERM, then SIGKILL after a grace period (30 s for a
process worker, the pod's terminationGracePeriodSeconds on Kubernetes). SIGTERM is raised in the
main thread only: the rotations a fleet run carries in its worker threads never see it, go on, and
are killed in the middle of a step without their ``finally``. So the fleet run, on SIGTERM, asks
every rotation of the process to stop here; each one then stops at its next step (rolling back an
uncommitted password), resumes the database and releases its lock, within the grace period.
"""

from __future__ import annotations

import threading
from typing import Final

from rotation.errors import RotationCancelled

_STOP: Final = threading.Event()
_why: list[str] = []


def request_stop(why: str) -> None:
    """Every rotation in this process stops at its next step boundary."""
    if not _STOP.is_set():
        _why.append(why)
        _STOP.set()


def stopping() -> bool:
    return _STOP.is_set()


def raise_if_stopping(ref: str, before: str) -> None:
    """Raise ``RotationCancelled`` when this process is being stopped, naming what was not started."""
    if _STOP.is_set():
        why = _why[0] if _why else "this process is being stopped"
        raise RotationCancelled(f"{ref}: stopped before {before}: {why}")


def reset() -> None:
    """Forget a stop (tests run many flows in one process)."""
    _STOP.clear()
    _why.clear()
