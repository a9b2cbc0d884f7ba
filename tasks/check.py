"""Step 4f, the final check, and the end of the rotation's durable record.

Every replica runs and is Ready, the availability group has exactly one primary (waited for within
the timeout: the coordinator elects one after the primary's restart), every replica accepts the new
password and rejects the old one. Only then is the restart-pending mark removed from the secret.
An arbiter pod is not a replica: it holds no data and takes no SQL step.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.credentials import finished, read_credentials
from rotation.errors import PermanentError, StepTimeout, TransientError
from rotation.kube import Kube
from rotation.plan import PodView, Target, primaries, roles_settled, usable_replicas
from rotation.sqlserver import accepts
from tasks._policy import RETRYING
from tasks.lock import check_lock


def _problems(pods: list[PodView], target: Target) -> list[str]:
    names = [r.pod for r in target.replicas]
    replicas = usable_replicas(pods, target.database, names)
    if replicas is None:
        return ["not every replica pod is running"]
    problems = [f"pod {p.name} is not Ready" for p in pods if p.name in names and not p.ready]
    if not roles_settled(replicas):
        problems.append(f"{len(primaries(replicas))} primary pods instead of one")
    return problems


@task(name="check-rotation", **RETRYING)
def check_rotation(target: Target, auth_secret: str) -> None:
    kube = Kube(target.namespace)
    creds = read_credentials(kube, auth_secret, purpose="the database's auth secret")
    deadline = time.monotonic() + target.timeout_seconds
    try:
        pods = kube.wait_for_database_pods(
            target.database,
            lambda pods: not _problems(pods, target),
            deadline,
            guard=lambda: check_lock(target),
        )
    except TimeoutError:
        problems = _problems(kube.list_database_pods(target.database), target)
        raise StepTimeout(
            f"{target.ref} final check: {'; '.join(problems)} after {target.timeout_seconds:.0f}s. The new "
            "password is committed; once the database is healthy, run the rotation again to finish"
        ) from None
    replicas = usable_replicas(pods, target.database, [r.pod for r in target.replicas]) or ()
    problems = []
    for replica in replicas:
        endpoint = target.endpoint_of(replica)
        if not accepts(endpoint, creds.username, creds.current):
            problems.append(f"{endpoint} rejects the new password")
        # The one deliberate failed login of a rotation per replica (audit logs show it): the proof
        # that the old password no longer works.
        if creds.previous is not None and accepts(endpoint, creds.username, creds.previous):
            problems.append(f"{endpoint} still accepts the old password")
    if problems:
        raise TransientError(f"{target.ref} final check: " + "; ".join(problems))
    if c.ANNOTATION_RESTART_PENDING not in creds.annotations:
        raise PermanentError(
            f"Secret {target.namespace}/{auth_secret} lost its restart-pending mark mid-rotation"
        )
    check_lock(target)
    kube.replace_secret(finished(creds))
    get_run_logger().info("%s: every replica accepts the new password and rejects the old one", target.ref)
