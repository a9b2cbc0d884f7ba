"""Step 4c, Verify — the gate: a real login with the new password on every replica.

Nothing is restarted unless every replica accepts the new password as the right login. A failure
raises ``VerificationFailed``; the flow then runs ``roll-back-password`` (tasks/rollback.py).
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation.credentials import read_credentials
from rotation.errors import VerificationFailed
from rotation.kube import Kube
from rotation.plan import Target
from rotation.sqlserver import login_name
from tasks._policy import RETRYING


@task(name="verify-logins", **RETRYING)
def verify_logins(target: Target) -> None:
    creds = read_credentials(Kube(target.namespace), target.auth_secret, purpose="the database's auth secret")
    new = creds.next
    if new is None:
        raise VerificationFailed(f"no staged password in Secret {target.namespace}/{creds.name} to verify")
    failures = []
    for endpoint in target.endpoints():
        name = login_name(endpoint, creds.username, new)
        if name is None:
            failures.append(f"{endpoint} rejects the new password")
        elif name.casefold() != creds.username.casefold():
            failures.append(f"{endpoint} logs the new password in as {name!r}, not {creds.username!r}")
    if failures:
        raise VerificationFailed(
            f"{target.ref}: {'; '.join(failures)}. The old password is being restored on every replica "
            "and no pod was restarted; check that replica's SQL Server, then run the rotation again"
        )
    get_run_logger().info("%s: all %d replica(s) accept the new password", target.ref, len(target.replicas))
