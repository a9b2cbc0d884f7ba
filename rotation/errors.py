"""The project's error hierarchy. Adapters turn driver errors into these; retry policies read them.

Messages are written for the person running the rotation: they name the object and say what to do.
They never carry a secret value.
"""

from __future__ import annotations


class RotationError(Exception):
    """Base class for everything this project raises on purpose."""


class PermanentError(RotationError):
    """Retrying will not help: bad input, a refused permission, a replica in an unknown state."""


class TransientError(RotationError):
    """A passing fault (network, conflict, server busy): the step may be retried as it is."""


class InvalidRequest(PermanentError):
    """The request or the objects it names are not usable; nothing was changed."""


class RotationInProgress(PermanentError):
    """Another rotation holds the database's lock."""


class VerificationFailed(PermanentError):
    """A replica did not accept the new password: nothing was restarted."""


class StepTimeout(PermanentError):
    """A step did not finish within the request's timeout."""


def is_transient(exc: BaseException | None) -> bool:
    return isinstance(exc, TransientError)


class DatabaseBusy(PermanentError):
    """Another operation (a KubeDB ops request, a person) has paused the database or is working on it."""


class PauseLost(PermanentError):
    """This run's pause was removed mid-rotation (KubeDB removes every pause when an ops request ends)."""


class TlsRefused(PermanentError):
    """No verified TLS connection to a replica: nothing, and no password, was sent to it."""


class UnsafeEnvironment(PermanentError):
    """This process is set up to write what it sends to SQL Server somewhere (FreeTDS's debug log):
    no connection that could carry a password is opened."""


class RotationCancelled(PermanentError):
    """The process running the rotation is being stopped (its run was cancelled, or its pod is going
    away): the run stopped at a step boundary, rolled back what was not committed, and resumed."""
