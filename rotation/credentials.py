"""The auth secret as the rotation's durable record: reading it, and the pure transitions of its
keys (stage, commit, roll back) in the style of AWS's version stages."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from kubernetes import client

from rotation import constants as c
from rotation.errors import InvalidRequest
from rotation.kube import Kube, encode_text, secret_text
from rotation.passwords import Password


@dataclass(frozen=True)
class Credentials:
    secret: client.V1Secret  # as read, with its resourceVersion, for an optimistic update
    username: str
    current: Password
    next: Password | None
    previous: Password | None

    @property
    def name(self) -> str:
        return str(self.secret.metadata.name)

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.secret.metadata.annotations or {})

    @property
    def keys(self) -> set[str]:
        return set((self.secret.data or {}).keys())


def read_credentials(kube: Kube, secret_name: str, *, purpose: str) -> Credentials:
    """The secret's credentials; ``InvalidRequest`` naming the secret when it is unusable."""
    where = f"Secret {kube.namespace}/{secret_name} ({purpose})"
    secret = kube.read_secret(secret_name)
    if secret is None:
        raise InvalidRequest(f"{where} does not exist: create it or fix the name")
    return credentials_from(secret, where=where)


def credentials_from(secret: client.V1Secret, *, where: str) -> Credentials:
    """Validate a credentials Secret and wrap its values (pure; ``where`` names it in errors).

    Like KubeDB, a basic-auth or an Opaque Secret is accepted when its username and password are set.
    Only the keys read here are decoded.
    """
    if (secret.type or c.SECRET_TYPE_OPAQUE) not in (c.SECRET_TYPE_BASIC_AUTH, c.SECRET_TYPE_OPAQUE):
        raise InvalidRequest(
            f"{where} has type {secret.type!r}; it must be {c.SECRET_TYPE_BASIC_AUTH} "
            f"(or {c.SECRET_TYPE_OPAQUE}) with the keys {c.KEY_USERNAME!r} and {c.KEY_PASSWORD!r}"
        )

    def text(key: str) -> str | None:
        return secret_text(secret.data, key, where=where)

    username = text(c.KEY_USERNAME)
    if not username:
        raise InvalidRequest(f"{where} has no {c.KEY_USERNAME!r} key: add the database username")
    current = text(c.KEY_PASSWORD)
    if not current:
        raise InvalidRequest(f"{where} has no {c.KEY_PASSWORD!r} key: add the password")

    def optional(key: str) -> Password | None:
        value = text(key)
        return Password(value) if value else None

    return Credentials(
        secret=secret,
        username=username,
        current=Password(current),
        next=optional(c.KEY_PASSWORD_NEXT),
        previous=optional(c.KEY_PASSWORD_PREV),
    )


def _with_changes(
    secret: client.V1Secret, changes: dict[str, str | None], annotations: dict[str, str]
) -> client.V1Secret:
    """A copy of ``secret`` (same resourceVersion): ``changes`` set (or, with None, remove) keys;
    every other key is kept as the raw bytes it was, never decoded."""
    updated = copy.deepcopy(secret)
    data = dict(secret.data or {})
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = encode_text(value)
    updated.data = data
    updated.metadata.annotations = annotations or None
    return updated


def staged(creds: Credentials, new: Password) -> client.V1Secret:
    """The secret with ``username.next``/``password.next`` holding the new password."""
    changes: dict[str, str | None] = {c.KEY_USERNAME_NEXT: creds.username, c.KEY_PASSWORD_NEXT: new.reveal()}
    return _with_changes(creds.secret, changes, creds.annotations)


def unstaged(creds: Credentials) -> client.V1Secret:
    """The secret without the ``.next`` keys (rollback, or cleanup after a switch of secret)."""
    changes: dict[str, str | None] = {c.KEY_USERNAME_NEXT: None, c.KEY_PASSWORD_NEXT: None}
    return _with_changes(creds.secret, changes, creds.annotations)


def committed(
    creds: Credentials,
    *,
    new: Password,
    old: Password,
    active_from: str,
    previous_secret: str,
    holder: str,
    pods_to_restart: list[str],
) -> client.V1Secret:
    """``.prev`` ← old, ``password`` ← new, no ``.next``; marked as waiting for the restarts of
    ``pods_to_restart`` (the UIDs of the pods running when the credentials changed)."""
    changes: dict[str, str | None] = {
        c.KEY_USERNAME_NEXT: None,
        c.KEY_PASSWORD_NEXT: None,
        c.KEY_USERNAME_PREV: creds.username,
        c.KEY_PASSWORD_PREV: old.reveal(),
        c.KEY_USERNAME: creds.username,
        c.KEY_PASSWORD: new.reveal(),
    }
    annotations = {
        **creds.annotations,
        c.ANNOTATION_ACTIVE_FROM: active_from,
        c.ANNOTATION_RESTART_PENDING: previous_secret,
        c.ANNOTATION_RESTART_PODS: ",".join(sorted(pods_to_restart)),
        c.ANNOTATION_ROTATED_BY: holder,
    }
    return _with_changes(creds.secret, changes, annotations)


def pods_to_restart(creds: Credentials) -> set[str] | None:
    """UIDs of the pods that still run with the old credentials; None when the mark predates them."""
    value = creds.annotations.get(c.ANNOTATION_RESTART_PODS)
    return None if value is None else {uid for uid in value.split(",") if uid}


def finished(creds: Credentials) -> client.V1Secret:
    annotations = creds.annotations
    annotations.pop(c.ANNOTATION_RESTART_PENDING, None)
    annotations.pop(c.ANNOTATION_RESTART_PODS, None)
    return _with_changes(creds.secret, {}, annotations)
