"""Step 4b, Set: ``ALTER LOGIN`` on EVERY replica (logins are per instance; AGs do not replicate them).

Idempotent: a replica that already accepts the new password is skipped, so a retry after a dropped
connection (which may or may not have committed) simply checks again. Undoing it is the rollback
hook of the stage step (``tasks.stage``), which runs whichever later step fails.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation.credentials import read_credentials
from rotation.errors import PermanentError
from rotation.kube import Kube
from rotation.plan import Target
from rotation.sqlserver import accepts, change_password
from tasks._policy import RETRYING


@task(name="set-password-on-replicas", **RETRYING)
def set_password_on_replicas(target: Target) -> list[str]:
    """Returns the pods whose password this call changed."""
    log = get_run_logger()
    creds = read_credentials(Kube(target.namespace), target.auth_secret, purpose="the database's auth secret")
    if creds.next is None:
        raise PermanentError(f"no staged password in Secret {target.namespace}/{creds.name}: stage it first")
    changed = []
    for endpoint in target.endpoints():
        if accepts(endpoint, creds.username, creds.next):
            log.info("%s already accepts the new password; skipped", endpoint)
            continue
        change_password(endpoint, creds.username, new=creds.next, old=creds.current)
        changed.append(endpoint.pod)
        log.info("password changed on %s", endpoint)
    return changed
