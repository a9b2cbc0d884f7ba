"""Pure tests of rotation/workloads.py: which workloads are restarted after a rotation (the Reloader
annotation, the restart_workloads parameter), how (kubectl rollout restart's patch), and what is said
about each (the report's table, the Event's message)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.rotate_auth import _validated
from rotation.errors import InvalidRequest
from rotation.params import RotationRequest
from rotation.report import RotationReport
from rotation.workloads import (
    RELOAD_ANNOTATION,
    Chosen,
    InvalidWorkload,
    Outcome,
    Why,
    WorkloadKind,
    WorkloadRef,
    WorkloadRestart,
    WorkloadRestarts,
    WorkloadView,
    annotated_for,
    choose,
    forbidden_list_note,
    not_permitted_message,
    parse_workload,
    parse_workloads,
    reload_secrets,
    restart_caveat,
    restart_patch,
)

DEPLOYMENT, STATEFULSET, DAEMONSET = WorkloadKind.DEPLOYMENT, WorkloadKind.STATEFULSET, WorkloadKind.DAEMONSET
APP = WorkloadRef(DEPLOYMENT, "app")
SECRET = "mssql-demo-auth"


# -- the parameter and --restart-workload ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployment/app", APP),
        ("Deployment/app", APP),
        ("DEPLOYMENTS/app", APP),
        ("deploy/app", APP),
        ("statefulset/db-client", WorkloadRef(STATEFULSET, "db-client")),
        ("StatefulSet/db-client", WorkloadRef(STATEFULSET, "db-client")),
        ("sts/db-client", WorkloadRef(STATEFULSET, "db-client")),
        ("daemonset/agent.v2", WorkloadRef(DAEMONSET, "agent.v2")),
        ("ds/agent", WorkloadRef(DAEMONSET, "agent")),
        (f"deployment/{'a' * 253}", WorkloadRef(DEPLOYMENT, "a" * 253)),
    ],
)
def test_a_kind_in_any_case_or_kubectls_spelling_and_a_name_make_a_workload(
    text: str, expected: WorkloadRef
) -> None:
    assert parse_workload(text, "item") == expected


def test_a_workload_prints_as_the_parameter_spells_it() -> None:
    assert str(WorkloadRef(STATEFULSET, "db")) == "statefulset/db"
    assert WorkloadRef(DAEMONSET, "agent").title == "DaemonSet agent"
    assert (DEPLOYMENT.plural, STATEFULSET.plural, DAEMONSET.plural) == (
        "deployments",
        "statefulsets",
        "daemonsets",
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "app",
            "is not KIND/NAME with KIND deployment, statefulset or daemonset: give e.g. 'deployment/my-app'",
        ),
        ("job/nightly", "is not KIND/NAME"),
        ("cronjob/nightly", "is not KIND/NAME"),
        ("pod/app-0", "is not KIND/NAME"),
        ("/app", "is not KIND/NAME"),
        ("deployment/", "'' is not a valid name: a DNS-1123 subdomain"),
        ("deployment/App", "'App' is not a valid name"),
        ("deployment/my_app", "'my_app' is not a valid name"),
        ("deployment/app/extra", "'app/extra' is not a valid name"),
        ("deployment/-app", "'-app' is not a valid name"),
        ("deployment/app\n", "is not a valid name"),
        (" deployment/app", "is not KIND/NAME"),
        (f"deployment/{'a' * 254}", "is not a valid name"),
    ],
)
def test_anything_else_is_refused_naming_the_value_and_what_to_give(text: str, says: str) -> None:
    with pytest.raises(InvalidWorkload) as refused:
        parse_workload(text, "--restart-workload")

    assert str(refused.value).startswith(f"--restart-workload {text!r}")
    assert says in str(refused.value)


def test_each_workload_is_kept_once_in_the_order_given() -> None:
    refs = parse_workloads(
        ["sts/db", "deployment/app", "Deployment/app", "deployments/app", "sts/db"], "item"
    )

    assert refs == (WorkloadRef(STATEFULSET, "db"), APP)


def test_the_request_normalises_the_parameter_and_defaults_to_none() -> None:
    base = {"namespace": "demo", "database": "mssql-demo"}

    assert RotationRequest.model_validate(base).restart_workloads == ()
    request = RotationRequest.model_validate(
        base | {"restart_workloads": ["Deploy/app", "deployment/app", "ds/x"]}
    )
    assert request.restart_workloads == ("deployment/app", "daemonset/x")


def test_a_bad_item_is_the_flows_invalid_request_naming_the_parameter_and_what_to_give() -> None:
    with pytest.raises(InvalidRequest) as refused:
        _validated(
            namespace="demo", database="mssql-demo", restart_workloads=("deployment/app", "job/nightly")
        )

    message = str(refused.value)
    assert message.startswith("invalid parameters: restart_workloads: ")
    assert "'job/nightly' is not KIND/NAME with KIND deployment, statefulset or daemonset" in message
    assert "give e.g. 'deployment/my-app'" in message


def test_the_parameter_schema_is_an_array_of_strings_described_for_the_form() -> None:
    prop = RotationRequest.model_json_schema()["properties"]["restart_workloads"]

    assert prop["type"] == "array" and prop["items"] == {"type": "string"}
    assert "deployment/NAME" in prop["description"] and RELOAD_ANNOTATION in prop["description"]
    assert "--restart-workload" in prop["description"]
    with pytest.raises(ValidationError):
        RotationRequest.model_validate(
            {
                "namespace": "demo",
                "database": "db",
                "restart_workloads": [f"deployment/a{i}" for i in range(101)],
            }
        )


# -- the annotation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "names"),
    [
        (SECRET, {SECRET}),
        (f"other-secret,{SECRET}", {"other-secret", SECRET}),
        (f" other-secret ,  {SECRET} ", {"other-secret", SECRET}),
        (f"{SECRET},", {SECRET}),
        ("", set()),
        (" , ", set()),
    ],
)
def test_the_reload_annotation_is_a_comma_separated_list_whitespace_ignored(
    value: str, names: set[str]
) -> None:
    assert reload_secrets({RELOAD_ANNOTATION: value}) == names


def test_a_workload_without_the_annotation_names_no_secret() -> None:
    assert reload_secrets(None) == reload_secrets({}) == frozenset()
    assert reload_secrets({"reloader.stakater.com/auto": "true"}) == frozenset()  # not this convention


def test_only_the_workloads_whose_annotation_names_the_auth_secret_are_found() -> None:
    views = [
        WorkloadView(WorkloadRef(STATEFULSET, "db-client"), {RELOAD_ANNOTATION: f"x, {SECRET}"}),
        WorkloadView(APP, {RELOAD_ANNOTATION: SECRET}),
        WorkloadView(WorkloadRef(DEPLOYMENT, "prefix"), {RELOAD_ANNOTATION: f"{SECRET}-old"}),
        WorkloadView(WorkloadRef(DEPLOYMENT, "other"), {RELOAD_ANNOTATION: "another-auth"}),
        WorkloadView(WorkloadRef(DAEMONSET, "plain"), {"unrelated": SECRET}),
    ]

    assert annotated_for(views, SECRET) == [APP, WorkloadRef(STATEFULSET, "db-client")]


# -- the selection -----------------------------------------------------------------------------------
def test_annotated_and_listed_workloads_are_merged_without_duplicates_with_every_reason() -> None:
    sts = WorkloadRef(STATEFULSET, "db-client")
    agent = WorkloadRef(DAEMONSET, "agent")

    chosen = choose([APP, sts, APP], [agent, APP, agent])

    assert chosen == [
        Chosen(agent, (Why.PARAMETER,)),
        Chosen(APP, (Why.ANNOTATION, Why.PARAMETER)),
        Chosen(sts, (Why.ANNOTATION,)),
    ]
    assert choose([], []) == []


# -- the restart -------------------------------------------------------------------------------------
def test_the_patch_is_kubectl_rollout_restarts_and_nothing_else() -> None:
    assert restart_patch("2024-05-01T03:00:00Z") == {
        "spec": {
            "template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T03:00:00Z"}}
            }
        }
    }


@pytest.mark.parametrize(
    ("kind", "spec", "says"),
    [
        (DEPLOYMENT, {"paused": True}, "paused"),
        (DEPLOYMENT, {"paused": False}, ""),
        (STATEFULSET, {"updateStrategy": {"type": "OnDelete"}}, "OnDelete"),
        (DAEMONSET, {"updateStrategy": {"type": "OnDelete"}}, "OnDelete"),
        (DAEMONSET, {"updateStrategy": {"type": "RollingUpdate"}}, ""),
        (STATEFULSET, {}, ""),
    ],
)
def test_what_keeps_a_restart_from_reaching_the_pods_is_said(
    kind: WorkloadKind, spec: dict[str, object], says: str
) -> None:
    caveat = restart_caveat(kind, {"spec": spec})

    assert (says in caveat) if says else caveat == ""


# -- what is said about it ---------------------------------------------------------------------------
COMMAND = "python -m rotation rbac --namespace demo --database mssql-demo --replicas 3 --restart-workload d/a"


def _restart(name: str, outcome: Outcome, message: str = "") -> WorkloadRestart:
    return WorkloadRestart(kind=DEPLOYMENT, name=name, why=[Why.ANNOTATION], outcome=outcome, message=message)


def test_the_not_permitted_message_names_the_command_that_grants_it() -> None:
    message = not_permitted_message(APP, COMMAND)

    assert "may not patch Deployment app (403 Forbidden)" in message
    assert f"`{COMMAND} | kubectl apply -f -`" in message


def test_a_refused_list_is_a_note_naming_the_kinds_and_the_grant() -> None:
    note = forbidden_list_note([DEPLOYMENT, DAEMONSET], "demo", COMMAND)

    assert "may not list the deployments, daemonsets of namespace demo (403 Forbidden)" in note
    assert RELOAD_ANNOTATION in note and COMMAND in note


def test_the_event_says_what_was_restarted_and_what_was_not_and_why() -> None:
    result = WorkloadRestarts(
        restarts=[
            _restart("app", Outcome.RESTARTED),
            _restart("web", Outcome.RESTARTED),
            _restart("denied", Outcome.NOT_PERMITTED, "may not"),
            _restart("gone", Outcome.NOT_FOUND, "does not exist"),
        ],
        notes=["could not list"],
    )

    assert result.event_message(SECRET) == (
        f"Restarted the workloads that use Secret {SECRET}: Deployment app, Deployment web; "
        "not restarted: Deployment denied (not-permitted: may not); "
        "not restarted: Deployment gone (not-found: does not exist); could not list"
    )
    assert not result.complete and not result.empty
    assert [r.name for r in result.not_restarted] == ["denied", "gone"]


def test_nothing_restarted_and_nothing_to_say() -> None:
    assert WorkloadRestarts().empty and WorkloadRestarts().complete
    only_failed = WorkloadRestarts(restarts=[_restart("app", Outcome.FAILED, "503")])
    assert only_failed.event_message(SECRET).startswith(f"Restarted no workload that uses Secret {SECRET}; ")


def _report(workloads: list[WorkloadRestart] | None = None, notes: list[str] | None = None) -> RotationReport:
    return RotationReport(
        namespace="demo",
        database="mssql-demo",
        outcome="Successful",
        auth_secret=SECRET,
        conditions=[],
        workloads=workloads or [],
        workload_notes=notes or [],
    )


def test_the_report_has_a_table_of_the_workloads_and_their_outcomes() -> None:
    report = _report(
        workloads=[
            WorkloadRestart(
                kind=DEPLOYMENT, name="app", why=[Why.ANNOTATION, Why.PARAMETER], outcome=Outcome.RESTARTED
            ),
            _restart("denied", Outcome.NOT_PERMITTED, "run `a | b`"),
        ],
        notes=["could not list"],
    )

    markdown = report.markdown()

    assert "## Workloads" in markdown
    assert "| Workload | Selected by | Outcome | Message |" in markdown
    assert "| Deployment app | annotation, parameter | restarted |  |" in markdown
    assert "| Deployment denied | annotation | not-permitted | run `a \\| b` |" in markdown
    assert markdown.rstrip().endswith("- could not list")


def test_a_report_without_workloads_has_no_such_section() -> None:
    assert "Workloads" not in _report().markdown()
    assert _report().workloads == [] and _report().workload_notes == []
