"""Compensation for Set/Verify: put the old password back wherever the new one logs in, then drop
the staged keys. Run by the flow when Set or Verify fails, so no replica is left on a password that
the secret does not hold as current.

(It is a task of its own rather than a Prefect transaction rollback hook: Prefect 3.9 rolls a
transaction back on the first failed attempt of a task, even when a retry then succeeds.)
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation.credentials import read_credentials, unstaged
from rotation.kube import Kube
from rotation.plan import Target
from rotation.sqlserver import accepts, change_password
from tasks._policy import RETRYING


@task(name="roll-back-password", **RETRYING)
def roll_back_password(target: Target) -> list[str]:
    """Returns the pods whose password was put back."""
    log = get_run_logger()
    kube = Kube(target.namespace)
    creds = read_credentials(kube, target.auth_secret, purpose="the database's auth secret")
    if creds.next is None:
        return []
    restored = []
    for endpoint in target.endpoints():
        if accepts(endpoint, creds.username, creds.next):
            change_password(endpoint, creds.username, new=creds.current, old=creds.next)
            restored.append(endpoint.pod)
            log.warning("rolled back: the old password is restored on %s", endpoint)
    kube.replace_secret(unstaged(creds))
    log.warning("rolled back: the staged password is removed from Secret %s/%s", target.namespace, creds.name)
    return restored
