"""Step 4f, the final check, and the end of the rotation's durable record.

Every pod is Ready, every replica accepts the new password and rejects the old one, and there is
exactly one primary. Only then is the restart-pending mark removed from the secret.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.credentials import finished, read_credentials
from rotation.errors import PermanentError, TransientError
from rotation.kube import Kube, pod_is_ready
from rotation.plan import Endpoint, Target, role_of
from rotation.sqlserver import accepts
from tasks._policy import RETRYING


@task(name="check-rotation", **RETRYING)
def check_rotation(target: Target, auth_secret: str) -> None:
    kube = Kube(target.namespace)
    creds = read_credentials(kube, auth_secret, purpose="the database's auth secret")
    pods = [p for p in kube.list_database_pods(target.database) if not p.metadata.deletion_timestamp]
    problems = []
    if len(pods) != len(target.replicas):
        problems.append(f"{len(pods)} of {len(target.replicas)} pods exist")
    primaries = 0
    for pod in pods:
        name = pod.metadata.name
        if not pod_is_ready(pod):
            problems.append(f"pod {name} is not Ready")
            continue
        primaries += role_of(pod.metadata.labels or {}, len(target.replicas)) == c.ROLE_PRIMARY
        endpoint = Endpoint(name, pod.status.pod_ip, target.sql_port)
        if not accepts(endpoint, creds.username, creds.current):
            problems.append(f"{endpoint} rejects the new password")
        if creds.previous is not None and accepts(endpoint, creds.username, creds.previous):
            problems.append(f"{endpoint} still accepts the old password")
    if primaries != 1:
        problems.append(f"{primaries} primary pods instead of one")
    if problems:
        # Pods may still be settling (a primary election); anything else was reported above.
        raise TransientError(f"{target.ref} final check: " + "; ".join(problems))
    if c.ANNOTATION_RESTART_PENDING not in creds.annotations:
        raise PermanentError(
            f"Secret {target.namespace}/{auth_secret} lost its restart-pending mark mid-rotation"
        )
    kube.replace_secret(finished(creds))
    get_run_logger().info("%s: every replica accepts the new password and rejects the old one", target.ref)
