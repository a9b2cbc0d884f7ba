"""Step 4b, Set: ``ALTER LOGIN`` on EVERY replica (logins are per instance; AGs do not replicate them).

Idempotent: each replica is changed by logging in with the current password; a replica that refuses
it is checked for the new one (a retry after a dropped connection that did commit, or a re-run), and
skipped if it has it. So a normal rotation makes no failed login here. Before each replica it checks
that no other operation holds the database (tasks/_guards.py). If Set or Verify fails, or that check
refuses, the flow runs ``roll-back-password`` (tasks/rollback.py).
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation.credentials import read_credentials
from rotation.errors import PermanentError
from rotation.kube import Kube
from rotation.plan import Target
from rotation.sqlserver import accepts, change_password
from tasks._guards import ROLL_BACK, confirm_held
from tasks._policy import RETRYING
from tasks.lock import check_lock


@task(name="set-password-on-replicas", **RETRYING)
def set_password_on_replicas(target: Target) -> list[str]:
    """Returns the pods whose password this call changed."""
    log = get_run_logger()
    kube = Kube(target.namespace)
    creds = read_credentials(kube, target.auth_secret, purpose="the database's auth secret")
    if creds.next is None:
        raise PermanentError(f"no staged password in Secret {target.namespace}/{creds.name}: stage it first")
    changed = []
    for endpoint in target.endpoints():
        check_lock(target)
        confirm_held(kube, target, then=ROLL_BACK)
        if change_password(
            endpoint, creds.username, new=creds.next, old=creds.current, guard=lambda: check_lock(target)
        ):
            changed.append(endpoint.pod)
            log.info("password changed on %s", endpoint)
        elif accepts(endpoint, creds.username, creds.next):
            log.info("%s already accepts the new password; skipped", endpoint)
        else:
            raise PermanentError(
                f"{endpoint} accepts neither the current nor the staged password of {creds.username!r}: "
                "it was changed outside this rotation; set it to the one in Secret "
                f"{target.namespace}/{creds.name} (key password), then run the rotation again"
            )
    return changed
