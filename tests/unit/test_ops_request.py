"""Pure tests of rotation/ops_request.py: which MSSQLServerOpsRequests the bridge takes, what it asks
the flow for, and the next step with each one."""

from __future__ import annotations

from typing import Any

import pytest

from rotation.ops_request import (
    ATTEMPT_ANNOTATION,
    EXECUTOR_ANNOTATION,
    RUN_ANNOTATION,
    WAITING_ANNOTATION,
    Action,
    flow_parameters,
    idempotency_key,
    invalid,
    is_ours,
    next_action,
    queued_by_bridge,
    request_of,
    waits_for,
)
from rotation.plan import active_ops_requests


def _obj(
    name: str = "rotate",
    *,
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    phase: str | None = None,
    created: str = "2026-11-29T10:00:00Z",
    deleting: bool = False,
    database: str = "mssql-demo",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "demo",
        "uid": f"uid-{name}",
        "generation": 1,
        "creationTimestamp": created,
        "annotations": {EXECUTOR_ANNOTATION: "prefect", **(annotations or {})},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T11:00:00Z"
    body: dict[str, Any] = {
        "metadata": meta,
        "spec": {"type": "RotateAuth", "databaseRef": {"name": database}, **(spec or {})},
    }
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def test_a_request_without_optional_fields_gets_kubedbs_defaults() -> None:
    request = request_of(_obj())
    assert (request.timeout, request.apply, request.max_retries, request.auth_secret) == (
        "5m",
        "IfReady",
        1,
        None,
    )
    assert request.attempt == 1 and request.run_id is None and not request.finished and not request.accepted


def test_the_spec_becomes_flow_parameters_naming_the_secret_never_holding_a_password() -> None:
    obj = _obj(
        spec={
            "authentication": {"secretRef": {"kind": "Secret", "name": "my-auth"}},
            "timeout": "90s",
            "apply": "Always",
            "maxRetries": 3,
        }
    )
    request = request_of(obj)
    assert flow_parameters(request) == {
        "namespace": "demo",
        "database": "mssql-demo",
        "auth_secret": "my-auth",
        "timeout": "90s",
        "apply": "Always",
        "ops_request": "rotate",
    }
    assert request.max_retries == 3


@pytest.mark.parametrize(
    ("annotations", "type_", "take_all", "ours"),
    [
        ({}, "RotateAuth", False, True),
        ({EXECUTOR_ANNOTATION: "kubedb"}, "RotateAuth", False, False),
        ({EXECUTOR_ANNOTATION: "kubedb"}, "RotateAuth", True, True),
        ({}, "Restart", False, False),
        ({}, "Restart", True, False),
    ],
)
def test_the_bridge_takes_annotated_rotate_auth_requests_or_with_all_every_one(
    annotations: dict[str, str], type_: str, take_all: bool, ours: bool
) -> None:
    obj = _obj(annotations=annotations)
    obj["spec"]["type"] = type_
    assert is_ours(request_of(obj), take_all) is ours


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"databaseRef": {}}, "spec.databaseRef.name is required"),
        ({"databaseRef": {"name": "Bad_Name"}}, "spec.databaseRef.name 'Bad_Name' is not a valid name"),
        ({"authentication": {"secretRef": {"kind": "ConfigMap", "name": "x"}}}, "Secret only"),
        ({"authentication": {"secretRef": {"apiGroup": "virtual-secrets.dev", "name": "x"}}}, "apiGroup"),
        ({"timeout": "soon"}, "spec.timeout 'soon' is not a duration such as 5m"),
        ({"timeout": "2s"}, "too short"),
        ({"apply": "Sometimes"}, "spec.apply 'Sometimes' must be IfReady or Always"),
    ],
)
def test_an_invalid_spec_is_named_field_by_field(spec: dict[str, Any], says: str) -> None:
    obj = _obj(spec=spec)
    problem = invalid(request_of(obj), obj["spec"])
    assert problem is not None and says in problem


def test_a_valid_spec_has_no_problem() -> None:
    obj = _obj(spec={"authentication": {"secretRef": {"kind": "Secret", "name": "a"}}, "timeout": "1m"})
    assert invalid(request_of(obj), obj["spec"]) is None


def test_one_idempotency_key_per_attempt_of_one_request() -> None:
    request = request_of(_obj())
    assert idempotency_key(request, 1) == "mssqlserveropsrequest/uid-rotate"
    assert idempotency_key(request, 2) == "mssqlserveropsrequest/uid-rotate/attempt-2"


def _started(attempt: int = 1, **kwargs: Any) -> dict[str, Any]:
    notes = {ATTEMPT_ANNOTATION: str(attempt), RUN_ANNOTATION: "run-1"}
    return _obj(annotations=notes, phase="Progressing", **kwargs)


@pytest.mark.parametrize(
    ("obj", "run_state", "action"),
    [
        (_obj(), None, Action.START),  # new
        (
            _obj(annotations={ATTEMPT_ANNOTATION: "1"}, phase="Pending"),
            None,
            Action.START,
        ),  # Prefect was down
        (_started(), "RUNNING", Action.NOTHING),
        (_started(), "SCHEDULED", Action.NOTHING),
        (_started(), "COMPLETED", Action.SUCCEED),
        (_started(), "FAILED", Action.RETRY),  # maxRetries 1: one more attempt
        (_started(attempt=2), "FAILED", Action.FAIL),  # out of attempts
        (_started(attempt=2, spec={"maxRetries": 0}), "CRASHED", Action.FAIL),
        (_started(spec={"maxRetries": 0}), "CANCELLED", Action.FAIL),
        (_started(), "DELETED", Action.RETRY),  # the run vanished from Prefect
        (_obj(phase="Successful"), None, Action.NOTHING),
        (_obj(phase="Failed"), None, Action.NOTHING),
        (_started(deleting=True), "RUNNING", Action.CANCEL),
        (_started(deleting=True), "CANCELLING", Action.NOTHING),  # asked already
        (_started(deleting=True), "CANCELLED", Action.RELEASE),
        (_obj(deleting=True), None, Action.RELEASE),  # deleted while Pending: never run
    ],
)
def test_the_next_step_with_a_request(obj: dict[str, Any], run_state: str | None, action: Action) -> None:
    assert next_action(request_of(obj), run_state) is action


def test_a_request_waits_for_an_accepted_one_of_the_same_database() -> None:
    running = request_of(_started(created="2026-11-29T09:00:00Z"))
    running = running.model_copy(update={"name": "first", "uid": "uid-first"})
    later = request_of(_obj("second"))
    assert waits_for(later, [running, later], take_all=False) == running
    other_db = request_of(_obj("third", database="other"))
    assert waits_for(other_db, [running, other_db], take_all=False) is None


def test_of_two_new_requests_of_one_database_the_older_goes_first() -> None:
    older = request_of(_obj("a", created="2026-11-29T09:00:00Z"))
    newer = request_of(_obj("b", created="2026-11-29T09:00:01Z"))
    assert waits_for(newer, [newer, older], take_all=False) == older
    assert waits_for(older, [newer, older], take_all=False) is None


def test_finished_and_deleted_requests_hold_nobody_back() -> None:
    done = request_of(_obj("a", phase="Successful", created="2026-11-29T09:00:00Z"))
    gone = request_of(_started(deleting=True)).model_copy(update={"name": "g", "uid": "uid-g"})
    new = request_of(_obj("b"))
    assert waits_for(new, [done, gone, new], take_all=False) is None


def test_someone_elses_progressing_request_holds_the_database() -> None:
    restart = _obj("restart", annotations={EXECUTOR_ANNOTATION: "kubedb"}, phase="Progressing")
    restart["spec"]["type"] = "Restart"
    new = request_of(_obj("b"))
    assert waits_for(new, [request_of(restart), new], take_all=False) == request_of(restart)


def test_a_running_rotation_ignores_requests_the_bridge_holds_back_but_not_others() -> None:
    queued = _obj("queued", phase="Pending")
    waiting_unannotated = _obj("waiting", annotations={EXECUTOR_ANNOTATION: "", WAITING_ANNOTATION: "x"})
    accepted = _obj("accepted", annotations={ATTEMPT_ANNOTATION: "1"}, phase="Pending")
    kubedbs = _obj("kubedbs", annotations={EXECUTOR_ANNOTATION: "kubedb"}, phase="Pending")
    assert queued_by_bridge(queued) and queued_by_bridge(waiting_unannotated)
    assert not queued_by_bridge(accepted) and not queued_by_bridge(kubedbs)
    active = active_ops_requests([queued, waiting_unannotated, accepted, kubedbs], "mssql-demo", own="mine")
    assert active == ["accepted (RotateAuth, Pending)", "kubedbs (RotateAuth, Pending)"]
