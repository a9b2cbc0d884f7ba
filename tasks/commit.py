"""Steps 4d, Commit the secret, and UpdatePetSets.

Commit: ``.prev`` ← old, ``password`` ← new, ``.next`` removed, ``kubedb.com/auth-active-from`` set,
and a restart-pending mark, in ONE write of the secret that will hold the credentials. With a user's
secret the database (and its PetSet) are then pointed at it. Each part checks before it acts, so a
re-run after a crash completes what is missing.

Only a switch to a user's secret writes the MSSQLServer's spec or the PetSet. With a generated
password the secret's name never changes, so neither is written: ``spec.authSecret.activeFrom`` is
left to KubeDB, whose provisioner copies the secret's ``kubedb.com/auth-active-from`` into it once
the database is resumed (``patchAuthSecretRef``), and this project reads the annotation first
anyway. That is what lets the generated-password Role (rotation/rbac.py) leave out ``patch`` of the
MSSQLServer and ``update`` of the PetSet, the verbs that could change a pod template.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from rotation import constants as c
from rotation.credentials import committed, read_credentials, unstaged
from rotation.kube import Kube, now_rfc3339
from rotation.plan import Stage, Target, is_database_pod
from tasks._guards import ROLL_BACK, ROLL_FORWARD, confirm_held
from tasks._policy import RETRYING
from tasks.lock import check_lock

PURPOSE = "the database's auth secret"


@task(name="commit-secret", **RETRYING)
def commit_secret(target: Target, user_secret: str | None) -> str:
    """Returns the name of the secret that now holds the credentials.

    Two halves: the secret's one write, then the MSSQLServer's ``spec.authSecret`` and the Event. A
    run that died between them left the secret committed; the next run (stage COMMITTED) comes here
    too and finishes the second half.
    """
    kube = Kube(target.namespace)
    check_lock(target)
    confirm_held(kube, target)
    secret_in_use, announce = target.auth_secret, False
    if target.stage is not Stage.COMMITTED:
        creds = read_credentials(kube, target.auth_secret, purpose=PURPOSE)
        secret_in_use = user_secret or target.auth_secret
        if creds.next is not None:  # else an earlier attempt of this task committed already
            into = (
                creds
                if not user_secret
                else read_credentials(kube, user_secret, purpose="the new auth secret")
            )
            secret = committed(
                into,
                new=creds.next,
                old=creds.current,
                active_from=now_rfc3339(),
                previous_secret=creds.name,
                holder=target.holder,
                pods_to_restart=_running_pods(kube, target),
            )
            check_lock(target)
            kube.replace_secret(secret)
            announce = True
            get_run_logger().info("%s: credentials committed to Secret %s", target.ref, into.name)
    _point_database_at(kube, target, secret_in_use, announce)
    return secret_in_use


def _running_pods(kube: Kube, target: Target) -> list[str]:
    """UIDs of the replicas running now: they started with the old credentials."""
    return [p.uid for p in kube.list_database_pods(target.database) if is_database_pod(p, target.database)]


def _point_database_at(kube: Kube, target: Target, secret_name: str, announce: bool) -> None:
    """On a switch to a user's secret: ``spec.authSecret.name`` and ``activeFrom`` as the committed
    secret says. The Event when this call committed or had to finish an interrupted switch.

    The spec is written only when its name is not ``secret_name`` (never with a generated password:
    see the module's docstring), so a run whose Role has no ``patch`` of the MSSQLServer never needs it.
    """
    creds = read_credentials(kube, secret_name, purpose=PURPOSE)
    db = kube.get_database(target.database)
    current = (db.get("spec") or {}).get("authSecret") or {}
    if current.get("name") != secret_name:
        wanted = {"name": secret_name, "activeFrom": creds.annotations.get(c.ANNOTATION_ACTIVE_FROM)}
        db = kube.patch_database_auth_secret(target.database, wanted)
    elif not announce:
        return
    switched = creds.annotations.get(c.ANNOTATION_RESTART_PENDING, secret_name) != secret_name
    message = (
        "Successfully referenced the user provided authsecret"
        if switched
        else "Successfully generated new credentials"
    )
    kube.record_event(db, "UpdateCredential", message)


@task(name="update-petsets", **RETRYING)
def update_petsets(target: Target, auth_secret: str) -> None:
    """Point the PetSet's secret references at the auth secret and drop stale staged keys.

    Writes the MSSQLServer and the PetSet only on a switch to a user's secret: with a generated
    password they already name the auth secret (KubeDB's provisioner keeps the PetSet so).
    """
    kube = Kube(target.namespace)
    db = confirm_held(kube, target, then=ROLL_FORWARD)
    if (db["spec"].get("authSecret") or {}).get("name") != auth_secret:  # a switch to a user's secret
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
            check_lock(target)
            kube.replace_secret(unstaged(old))


@task(name="check-before-commit", **RETRYING)
def check_before_commit(target: Target) -> None:
    """The last check before the commit, inside Set/Verify's rollback: if another operation holds
    the database now, the flow puts the old password back instead of committing the new one.

    (commit-secret checks again itself: it also runs alone, finishing an interrupted commit.)
    """
    check_lock(target)
    confirm_held(Kube(target.namespace), target, then=ROLL_BACK)
