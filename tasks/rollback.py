"""Compensation for Set/Verify: put the old password back on every replica that has the new one,
confirm that every replica accepts the old (current) password, and only then drop the staged keys.
Run by the flow when Set or Verify fails, so no replica is left on a password that the secret does
not hold as current.

Every replica is tried even when one fails; if any is not back on the current password, the staged
password stays in ``password.next`` (the secret must keep every password some replica may have) and
the error says so: the next run finds it staged and finishes the rotation instead.

(It is a task of its own rather than a Prefect transaction rollback hook: Prefect 3.9 rolls a
transaction back on the first failed attempt of a task, even when a retry then succeeds.)
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation.credentials import read_credentials, unstaged
from rotation.errors import PermanentError, RotationError, TransientError
from rotation.kube import Kube
from rotation.plan import Target
from rotation.sqlserver import accepts, change_password
from tasks._policy import RETRYING
from tasks.lock import check_lock


@task(name="roll-back-password", **RETRYING)
def roll_back_password(target: Target) -> list[str]:
    """Returns the pods whose password was put back."""
    log = get_run_logger()
    kube = Kube(target.namespace)
    creds = read_credentials(kube, target.auth_secret, purpose="the database's auth secret")
    if creds.next is None:
        return []
    restored: list[str] = []
    problems: list[RotationError] = []
    for endpoint in target.endpoints():
        check_lock(target)
        try:
            if change_password(
                endpoint, creds.username, new=creds.current, old=creds.next, guard=lambda: check_lock(target)
            ):
                restored.append(endpoint.pod)
                log.warning("rolled back: the old password is restored on %s", endpoint)
            if not accepts(endpoint, creds.username, creds.current):
                problems.append(PermanentError(f"{endpoint} accepts neither password"))
        except RotationError as exc:
            problems.append(exc)
    if problems:
        # Worth another try only if every problem may pass (an unreachable replica, say).
        kind = TransientError if all(isinstance(p, TransientError) for p in problems) else PermanentError
        raise kind(
            f"{target.ref}: the rollback could not confirm the old password on every replica "
            f"({'; '.join(map(str, problems))}); the staged password stays in Secret "
            f"{target.namespace}/{creds.name} (password.next)"
        )
    check_lock(target)
    kube.replace_secret(unstaged(creds))
    log.warning("rolled back: the staged password is removed from Secret %s/%s", target.namespace, creds.name)
    return restored
