"""Step 4a, Stage: choose the new password and store it durably BEFORE any SQL Server is touched.

The new password goes into the auth secret under ``username.next``/``password.next``; from then on a
crash at any moment leaves it recoverable. A password already staged by an interrupted run is reused,
because some replicas may already have it.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation.credentials import read_credentials, staged
from rotation.kube import Kube
from rotation.passwords import Password, generate_password
from rotation.plan import Stage, Target
from tasks._policy import RETRYING
from tasks.lock import check_lock


@task(name="stage-new-password", **RETRYING)
def stage_new_password(target: Target, user_secret: str | None) -> str | None:
    """Stage the new password; returns the user secret it came from, or None when generated."""
    if target.stage is Stage.COMMITTED:
        return None
    log = get_run_logger()
    kube = Kube(target.namespace)
    creds = read_credentials(kube, target.auth_secret, purpose="the database's auth secret")
    supplied: Password | None = None
    if user_secret:
        supplied = read_credentials(kube, user_secret, purpose="the new auth secret").current
    if creds.next is not None:
        if supplied is not None and supplied == creds.next:
            return user_secret
        if supplied is not None:
            log.warning(
                "%s: finishing the interrupted rotation to the password staged in %s first; "
                "run again to switch to Secret %s",
                target.ref,
                target.auth_secret,
                user_secret,
            )
        return None
    new = supplied if supplied is not None else generate_password()
    check_lock(target)
    kube.replace_secret(staged(creds, new))
    log.info(
        "%s: new password staged in Secret %s (%s)",
        target.ref,
        target.auth_secret,
        f"from Secret {user_secret}" if user_secret else "generated",
    )
    return user_secret
