"""Steps 4d, Commit the secret, and UpdatePetSets.

Commit: ``.prev`` ← old, ``password`` ← new, ``.next`` removed, ``kubedb.com/auth-active-from`` set,
and a restart-pending mark, in ONE write of the secret that will hold the credentials. With a user's
secret the database (and its PetSet) are then pointed at it. Each part checks before it acts, so a
re-run after a crash completes what is missing.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.credentials import committed, read_credentials, unstaged
from rotation.kube import Kube, now_rfc3339
from rotation.plan import Stage, Target
from tasks._guards import confirm_paused
from tasks._policy import RETRYING

PURPOSE = "the database's auth secret"


@task(name="commit-secret", **RETRYING)
def commit_secret(target: Target, user_secret: str | None, holder: str) -> str:
    """Returns the name of the secret that now holds the credentials."""
    if target.stage is Stage.COMMITTED:
        return target.auth_secret
    kube = Kube(target.namespace)
    confirm_paused(kube, target, holder)
    creds = read_credentials(kube, target.auth_secret, purpose=PURPOSE)
    if creds.next is None:  # committed by an earlier attempt of this task
        return user_secret or target.auth_secret
    into = creds if not user_secret else read_credentials(kube, user_secret, purpose="the new auth secret")
    active_from = now_rfc3339()
    kube.replace_secret(
        committed(
            into,
            new=creds.next,
            old=creds.current,
            active_from=active_from,
            previous_secret=creds.name,
            holder=holder,
        )
    )
    if user_secret:
        kube.patch_database_auth_secret(target.database, {"name": user_secret, "activeFrom": active_from})
    else:
        kube.patch_database_auth_secret(target.database, {"activeFrom": active_from})
    kube.record_event(
        kube.get_database(target.database),
        "UpdateCredential",
        "Successfully referenced the user provided authsecret"
        if user_secret
        else "Successfully generated new credentials",
    )
    get_run_logger().info("%s: credentials committed to Secret %s", target.ref, into.name)
    return into.name


@task(name="update-petsets", **RETRYING)
def update_petsets(target: Target, auth_secret: str, holder: str) -> None:
    """Point the PetSet's secret references at the auth secret and drop stale staged keys."""
    kube = Kube(target.namespace)
    db = confirm_paused(kube, target, holder)
    if (db["spec"].get("authSecret") or {}).get("name") != auth_secret:
        kube.patch_database_auth_secret(target.database, {"name": auth_secret})
    petset = kube.get_petset(target.database)
    changed = False
    for container in petset["spec"]["template"]["spec"].get("containers", []):
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref.get("name") != auth_secret and ref.get("key") in (c.KEY_PASSWORD, c.KEY_USERNAME):
                ref["name"] = auth_secret
                changed = True
    if changed:
        kube.replace_petset(petset)
    in_use = read_credentials(kube, auth_secret, purpose=PURPOSE)
    previous = in_use.annotations.get(c.ANNOTATION_RESTART_PENDING, "")
    if previous and previous != auth_secret:
        old = read_credentials(kube, previous, purpose="the previous auth secret")
        if old.next is not None:
            kube.replace_secret(unstaged(old))
