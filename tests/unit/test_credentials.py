"""Pure tests of the auth secret's transitions in rotation/credentials.py (no API calls)."""

from __future__ import annotations

import base64
import re

import pytest
from kubernetes import client

from rotation import constants as c
from rotation.credentials import (
    Credentials,
    committed,
    credentials_from,
    finished,
    pods_to_restart,
    staged,
    unstaged,
)
from rotation.errors import InvalidRequest
from rotation.passwords import Password

OLD = "Old-Pass-1'ß"
NEW = "New-Pass-2]Ω"
NEXT = "Next-Pass-3中"
PREV = "Prev-Pass-0"
ACTIVE_FROM = "2024-05-01T12:00:00Z"


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def _plain(secret: client.V1Secret) -> dict[str, str]:
    return {key: base64.b64decode(value).decode("utf-8") for key, value in (secret.data or {}).items()}


def _creds(
    data: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    *,
    username: str = "sa",
) -> Credentials:
    data = {c.KEY_USERNAME: username, c.KEY_PASSWORD: OLD} if data is None else data
    secret = client.V1Secret(
        api_version="v1",
        kind="Secret",
        type=c.SECRET_TYPE_BASIC_AUTH,
        metadata=client.V1ObjectMeta(
            name="mssql-auth", namespace="demo", resource_version="4711", annotations=annotations
        ),
        data={key: _b64(value) for key, value in data.items()},
    )
    return credentials_from(secret, where="Secret demo/mssql-auth (test)")


# --- Credentials ---------------------------------------------------------------------------------


def test_credentials_expose_the_secret_name_keys_and_a_copy_of_the_annotations() -> None:
    creds = _creds(annotations={"a": "1"})
    assert creds.name == "mssql-auth"
    assert creds.keys == {c.KEY_USERNAME, c.KEY_PASSWORD}
    creds.annotations["b"] = "2"
    assert creds.annotations == {"a": "1"}


def test_credentials_without_annotations_or_data_read_as_empty() -> None:
    creds = _creds(annotations=None)
    creds.secret.data = None
    assert creds.annotations == {}
    assert creds.keys == set()


# --- staged --------------------------------------------------------------------------------------


def test_staging_adds_next_username_and_password_and_keeps_the_current_ones() -> None:
    secret = staged(_creds(), Password(NEW))
    assert _plain(secret) == {
        c.KEY_USERNAME: "sa",
        c.KEY_PASSWORD: OLD,
        c.KEY_USERNAME_NEXT: "sa",
        c.KEY_PASSWORD_NEXT: NEW,
    }


def test_staging_stores_base64_of_utf8() -> None:
    secret = staged(_creds(), Password(NEW))
    assert secret.data[c.KEY_PASSWORD_NEXT] == _b64(NEW)


def test_staging_replaces_a_previously_staged_password() -> None:
    creds = _creds(
        {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD, c.KEY_USERNAME_NEXT: "sa", c.KEY_PASSWORD_NEXT: NEXT}
    )
    assert _plain(staged(creds, Password(NEW)))[c.KEY_PASSWORD_NEXT] == NEW


def test_staging_keeps_annotations_other_keys_and_the_resource_version() -> None:
    creds = _creds(
        {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD, c.KEY_PASSWORD_PREV: PREV, "extra": "kept"},
        {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM},
    )
    secret = staged(creds, Password(NEW))
    data = _plain(secret)
    assert data[c.KEY_PASSWORD_PREV] == PREV
    assert data["extra"] == "kept"
    assert secret.metadata.annotations == {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM}
    assert secret.metadata.resource_version == "4711"
    assert secret.metadata.name == "mssql-auth"


def test_staging_a_secret_without_annotations_leaves_annotations_unset() -> None:
    assert staged(_creds(annotations=None), Password(NEW)).metadata.annotations is None


# --- unstaged ------------------------------------------------------------------------------------


def test_unstaging_removes_only_the_next_keys() -> None:
    creds = _creds(
        {
            c.KEY_USERNAME: "sa",
            c.KEY_PASSWORD: OLD,
            c.KEY_USERNAME_NEXT: "sa",
            c.KEY_PASSWORD_NEXT: NEXT,
            c.KEY_PASSWORD_PREV: PREV,
        },
        {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM},
    )
    secret = unstaged(creds)
    assert _plain(secret) == {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD, c.KEY_PASSWORD_PREV: PREV}
    assert secret.metadata.annotations == {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM}
    assert secret.metadata.resource_version == "4711"


def test_unstaging_an_unstaged_secret_changes_nothing() -> None:
    assert _plain(unstaged(_creds())) == {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD}


# --- committed -----------------------------------------------------------------------------------


HOLDER = "prefect-flow-run/00000000-0000-0000-0000-000000000001"
PODS = ["uid-mssql-0", "uid-mssql-1"]


def _committed_from_staged(annotations: dict[str, str] | None = None) -> client.V1Secret:
    creds = _creds(
        {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD, c.KEY_USERNAME_NEXT: "sa", c.KEY_PASSWORD_NEXT: NEW},
        annotations,
    )
    return committed(
        creds,
        new=Password(NEW),
        old=Password(OLD),
        active_from=ACTIVE_FROM,
        previous_secret="mssql-auth",
        holder=HOLDER,
        pods_to_restart=PODS,
    )


def test_committing_makes_the_new_password_current_and_the_old_one_previous() -> None:
    assert _plain(_committed_from_staged()) == {
        c.KEY_USERNAME: "sa",
        c.KEY_PASSWORD: NEW,
        c.KEY_USERNAME_PREV: "sa",
        c.KEY_PASSWORD_PREV: OLD,
    }


def test_committing_removes_the_next_keys() -> None:
    data = _plain(_committed_from_staged())
    assert c.KEY_PASSWORD_NEXT not in data
    assert c.KEY_USERNAME_NEXT not in data


def test_committing_marks_active_from_and_restart_pending_and_keeps_other_annotations() -> None:
    secret = _committed_from_staged({"team": "dba", c.ANNOTATION_ACTIVE_FROM: "2020-01-01T00:00:00Z"})
    assert secret.metadata.annotations == {
        "team": "dba",
        c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM,
        c.ANNOTATION_RESTART_PENDING: "mssql-auth",
        c.ANNOTATION_RESTART_PODS: "uid-mssql-0,uid-mssql-1",
        c.ANNOTATION_ROTATED_BY: HOLDER,
    }
    assert secret.metadata.resource_version == "4711"


def test_committing_overwrites_an_older_previous_password() -> None:
    creds = _creds(
        {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD, c.KEY_USERNAME_PREV: "sa", c.KEY_PASSWORD_PREV: PREV}
    )
    secret = committed(
        creds,
        new=Password(NEW),
        old=Password(OLD),
        active_from=ACTIVE_FROM,
        previous_secret="x",
        holder=HOLDER,
        pods_to_restart=PODS,
    )
    assert _plain(secret)[c.KEY_PASSWORD_PREV] == OLD


def test_committing_into_a_user_supplied_secret_keeps_its_password_and_records_the_old_one() -> None:
    # The user's secret already holds the new password; the old one comes from the database's secret.
    creds = _creds({c.KEY_USERNAME: "sa", c.KEY_PASSWORD: NEW})
    secret = committed(
        creds,
        new=Password(NEW),
        old=Password(OLD),
        active_from=ACTIVE_FROM,
        previous_secret="mssql-auth-old",
        holder=HOLDER,
        pods_to_restart=PODS,
    )
    assert _plain(secret)[c.KEY_PASSWORD] == NEW
    assert _plain(secret)[c.KEY_PASSWORD_PREV] == OLD
    assert secret.metadata.annotations[c.ANNOTATION_RESTART_PENDING] == "mssql-auth-old"


# --- finished ------------------------------------------------------------------------------------


def test_finishing_removes_only_the_restart_pending_mark() -> None:
    creds = _creds(
        {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: NEW, c.KEY_USERNAME_PREV: "sa", c.KEY_PASSWORD_PREV: OLD},
        {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM, c.ANNOTATION_RESTART_PENDING: "mssql-auth", "team": "dba"},
    )
    secret = finished(creds)
    assert secret.metadata.annotations == {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM, "team": "dba"}
    assert _plain(secret) == {
        c.KEY_USERNAME: "sa",
        c.KEY_PASSWORD: NEW,
        c.KEY_USERNAME_PREV: "sa",
        c.KEY_PASSWORD_PREV: OLD,
    }
    assert secret.metadata.resource_version == "4711"


def test_finishing_when_the_mark_was_the_only_annotation_leaves_none() -> None:
    creds = _creds(annotations={c.ANNOTATION_RESTART_PENDING: "mssql-auth"})
    assert finished(creds).metadata.annotations is None


def test_finishing_an_unmarked_secret_changes_nothing() -> None:
    creds = _creds(annotations={c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM})
    secret = finished(creds)
    assert secret.metadata.annotations == {c.ANNOTATION_ACTIVE_FROM: ACTIVE_FROM}
    assert _plain(secret) == {c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD}


@pytest.mark.parametrize("transition", ["staged", "unstaged", "committed", "finished"])
def test_no_transition_changes_the_username(transition: str) -> None:
    creds = _creds(username="app_user")
    secret = {
        "staged": lambda: staged(creds, Password(NEW)),
        "unstaged": lambda: unstaged(creds),
        "committed": lambda: committed(
            creds,
            new=Password(NEW),
            old=Password(OLD),
            active_from=ACTIVE_FROM,
            previous_secret="x",
            holder=HOLDER,
            pods_to_restart=PODS,
        ),
        "finished": lambda: finished(creds),
    }[transition]()
    assert _plain(secret)[c.KEY_USERNAME] == "app_user"


# --- validation of a Secret ----------------------------------------------------------------------
def _secret(type_: str = c.SECRET_TYPE_BASIC_AUTH, **data: str) -> client.V1Secret:
    return client.V1Secret(
        type=type_,
        metadata=client.V1ObjectMeta(name="s"),
        data={key.replace("_", "."): _b64(value) for key, value in data.items()},
    )


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (
            _secret("kubernetes.io/tls", username="sa", password=OLD),
            "has type 'kubernetes.io/tls'; it must be kubernetes.io/basic-auth (or Opaque)",
        ),
        (_secret(password=OLD), "has no 'username' key"),
        (_secret(username="sa"), "has no 'password' key"),
        (_secret(username="sa", password=""), "has no 'password' key"),
    ],
)
def test_an_unusable_secret_is_refused_naming_it_and_what_is_missing(
    secret: client.V1Secret, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(f"Secret x/s (why) {message}")):
        credentials_from(secret, where="Secret x/s (why)")


@pytest.mark.parametrize("type_", [c.SECRET_TYPE_BASIC_AUTH, c.SECRET_TYPE_OPAQUE, None])
def test_a_basic_auth_or_opaque_secret_is_accepted_as_kubedb_does(type_: str | None) -> None:
    secret = _secret(username="sa", password=OLD)
    secret.type = type_  # an empty type is Opaque to the API server
    assert credentials_from(secret, where="w").current.reveal() == OLD


def test_a_valid_secret_yields_its_passwords_wrapped() -> None:
    creds = credentials_from(_secret(username="sa", password=OLD, password_next=NEXT), where="w")
    assert creds.username == "sa" and creds.current.reveal() == OLD
    assert creds.next is not None and creds.next.reveal() == NEXT and creds.previous is None


# --- which pods a recovery still restarts ---------------------------------------------------------


def test_committing_records_the_pods_running_with_the_old_credentials_and_finishing_drops_them() -> None:
    secret = _committed_from_staged()
    marked = credentials_from(secret, where="w")
    assert pods_to_restart(marked) == set(PODS)
    assert pods_to_restart(credentials_from(finished(marked), where="w")) is None


def test_a_mark_without_pods_is_from_before_they_were_recorded_so_every_pod_is_restarted() -> None:
    assert pods_to_restart(_creds({c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD})) is None


# --- only the keys the rotation uses are decoded ---------------------------------------------------


def test_a_key_the_rotation_does_not_use_is_kept_as_it_was_even_if_it_is_not_text() -> None:
    creds = _creds({c.KEY_USERNAME: "sa", c.KEY_PASSWORD: OLD})
    creds.secret.data["tls.key"] = base64.b64encode(b"\xff\xfe binary").decode()
    secret = staged(credentials_from(creds.secret, where="w"), Password(NEW))
    assert secret.data["tls.key"] == creds.secret.data["tls.key"]


def test_a_password_that_is_not_utf8_is_refused_naming_the_key_and_never_showing_its_bytes() -> None:
    latin1 = "Pässwörd-1".encode("latin-1")
    secret = _secret(username="sa")
    secret.data[c.KEY_PASSWORD] = base64.b64encode(latin1).decode()
    with pytest.raises(InvalidRequest) as caught:
        credentials_from(secret, where="Secret x/s (why)")
    assert "Secret x/s (why): the value of key 'password' is not UTF-8" in str(caught.value)
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert "P\\xe4" not in repr(caught.value) and "xe4" not in repr(caught.value)
