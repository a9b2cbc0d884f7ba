"""The in-cluster fleet's identity (issue 21, item 5): ``python -m rotation rbac-fleet`` (its
ServiceAccount and a list-only discovery role), ``rbac ... --fleet`` (a database's grant bound to it
too), its work pool's base job template and its two deployments in prefect.yaml, as data. The same
grants against a real API server: tests/e2e/test_rbac.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotation import rbac
from sandbox.prefect_stack import K8S_BASE_JOB_TEMPLATE, K8S_FLEET_JOB_TEMPLATE, K8S_FLEET_POOL

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deployments" / "rbac-fleet.yaml"
WORKER = ROOT / "deployments" / "worker-fleet.yaml"
NS, DB = "demo", "mssql-demo"
LIST_ONLY = [{"apiGroups": ["kubedb.com"], "resources": ["mssqlservers"], "verbs": ["list"]}]
FLEET_SUBJECT = {"kind": "ServiceAccount", "name": rbac.FLEET_IDENTITY, "namespace": rbac.IDENTITY}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotation", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- rbac ... --fleet ----------------------------------------------------------------------------------
def test_fleet_binds_the_same_role_to_the_fleet_service_account_too() -> None:
    alone = rbac.grant(NS, DB, 3, user_secrets=["u"])
    both = rbac.grant(NS, DB, 3, user_secrets=["u"], fleet=True)

    assert rbac.role(both) == rbac.role(alone)  # the same per-database rules, nothing wider
    assert rbac.lease(both) == rbac.lease(alone)
    assert rbac.role_binding(both)["subjects"] == [
        {"kind": "ServiceAccount", "name": rbac.IDENTITY, "namespace": rbac.IDENTITY},
        FLEET_SUBJECT,
    ]
    assert rbac.role_binding(both)["metadata"]["namespace"] == NS  # a RoleBinding, never cluster-wide
    assert both.command.endswith("--fleet") and "--fleet" not in alone.command
    assert list(yaml.safe_load_all(rbac.render(both))) == rbac.documents(both)
    assert "mssql-auth-rotation/mssql-auth-rotation-fleet, the in-cluster fleet's" in rbac.render(both)


def test_fleet_follows_the_service_account_namespace_and_binds_an_account_once() -> None:
    elsewhere = rbac.grant(NS, DB, 1, service_account_namespace="ops", fleet=True)
    fleet_only = rbac.grant(NS, DB, 1, service_account=rbac.FLEET_IDENTITY, fleet=True)

    assert elsewhere.subjects == [("ops", rbac.IDENTITY), ("ops", rbac.FLEET_IDENTITY)]
    assert rbac.role_binding(fleet_only)["subjects"] == [FLEET_SUBJECT]


def test_the_cli_takes_fleet() -> None:
    done = cli("rbac", "--namespace", NS, "--database", DB, "--replicas", "2", "--fleet")

    assert done.returncode == 0, done.stderr
    _, binding, _ = yaml.safe_load_all(done.stdout)
    assert FLEET_SUBJECT in binding["subjects"] and len(binding["subjects"]) == 2
    assert done.stdout.splitlines()[1].endswith("--replicas 2 --fleet")


# -- rbac-fleet ----------------------------------------------------------------------------------------
def kinds(docs: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(d["kind"], d["metadata"].get("namespace")) for d in docs]


def test_all_namespaces_is_the_service_account_and_a_list_only_cluster_role() -> None:
    docs = rbac.fleet_documents(rbac.fleet_grant(all_namespaces=True))

    assert kinds(docs) == [
        ("ServiceAccount", rbac.IDENTITY),
        ("ClusterRole", None),
        ("ClusterRoleBinding", None),
    ]
    account, role, binding = docs
    assert account["metadata"]["name"] == rbac.FLEET_IDENTITY
    assert role["rules"] == LIST_ONLY  # no get, no watch, no secrets, no write
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": rbac.FLEET_ROLE,
    }
    assert binding["subjects"] == [FLEET_SUBJECT]


def test_named_namespaces_get_a_list_only_role_each_and_nothing_cluster_wide() -> None:
    g = rbac.fleet_grant(["sales", "billing", "sales"])
    docs = rbac.fleet_documents(g)

    assert g.namespaces == ("sales", "billing")
    assert kinds(docs) == [
        ("ServiceAccount", rbac.IDENTITY),
        ("Role", "sales"),
        ("RoleBinding", "sales"),
        ("Role", "billing"),
        ("RoleBinding", "billing"),
    ]
    for doc in docs[1::2]:
        assert doc["rules"] == LIST_ONLY
    for doc in docs[2::2]:
        assert doc["roleRef"]["kind"] == "Role" and doc["subjects"] == [FLEET_SUBJECT]
    assert g.command == "python -m rotation rbac-fleet --namespace sales --namespace billing"


@pytest.mark.parametrize(
    "g",
    [
        rbac.fleet_grant(all_namespaces=True),
        rbac.fleet_grant(["a", "yes"], service_account="fleet-2", service_account_namespace="ops"),
    ],
)
def test_the_fleet_yaml_says_what_the_dicts_say(g: rbac.FleetGrant) -> None:
    text = rbac.render_fleet(g)

    assert list(yaml.safe_load_all(text)) == rbac.fleet_documents(g)
    assert text.splitlines()[2] == f"#   {g.command}"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "one of the arguments --all-namespaces --namespace is required"),
        (["--all-namespaces", "--namespace", "a"], "not allowed with argument"),
        (["--namespace", "Sales"], "--namespace 'Sales'"),
        (["--all-namespaces", "--service-account", "Fleet"], "--service-account 'Fleet'"),
    ],
)
def test_rbac_fleet_refuses_a_bad_or_missing_scope_printing_nothing(args: list[str], named: str) -> None:
    done = cli("rbac-fleet", *args)

    assert done.returncode == 2
    assert done.stdout == ""
    assert "error:" in done.stderr and named in done.stderr, done.stderr


def test_a_fleet_grant_without_a_scope_is_refused_saying_both_choices() -> None:
    with pytest.raises(rbac.InvalidName, match=r"--all-namespaces.*--namespace NS"):
        rbac.fleet_grant()


def test_the_committed_fleet_identity_is_what_its_command_prints() -> None:
    """deployments/rbac-fleet.yaml cannot drift: regenerate it with the command on its third line."""
    committed = COMMITTED.read_text()
    argv = shlex.split(committed.splitlines()[2].removeprefix("#   "))
    assert argv == ["python", "-m", "rotation", "rbac-fleet", "--all-namespaces"]

    done = cli(*argv[3:])

    assert done.returncode == 0, done.stderr
    assert done.stdout == committed, f"{COMMITTED.name} is stale: run `{' '.join(argv)} > {COMMITTED.name}`"


# -- the fleet's work pool and deployments -------------------------------------------------------------
# What the fleet's template may differ in from the base template: whose Job it is, and its deadline
# (a fleet run covers many databases).
FLEET_ONLY = ("generateName", "serviceAccountName", "activeDeadlineSeconds")


def _without_fleet_only(template: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(template))
    job = copy["job_configuration"]["job_manifest"]
    job["metadata"].pop("generateName")
    job["spec"].pop("activeDeadlineSeconds", None)
    job["spec"]["template"]["spec"].pop("serviceAccountName")
    copy["variables"].pop("description")
    return copy  # type: ignore[no-any-return]


def test_the_fleet_template_is_the_base_template_for_the_fleet_identity() -> None:
    """Every hardening of k8s-base-job-template.json holds for the fleet's Jobs: a change to one
    template that is not made to the other fails here."""
    base, fleet = (json.loads(p.read_text()) for p in (K8S_BASE_JOB_TEMPLATE, K8S_FLEET_JOB_TEMPLATE))

    assert _without_fleet_only(fleet) == _without_fleet_only(base)
    job = fleet["job_configuration"]["job_manifest"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == rbac.FLEET_IDENTITY
    assert job["metadata"]["generateName"] == f"{rbac.FLEET_IDENTITY}-"
    assert ("activeDeadlineSeconds" in job["spec"]) == (
        "activeDeadlineSeconds" in base["job_configuration"]["job_manifest"]["spec"]
    )
    placeholders = {p for p in json.dumps(fleet["job_configuration"]).split('"') if "{{" in p}
    assert placeholders == {"{{ finished_job_ttl }}"}
    assert set(fleet["variables"]["properties"]) == {"finished_job_ttl"}
    assert fleet["variables"]["additionalProperties"] is False


def deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


@pytest.mark.parametrize(
    ("in_cluster", "twin"), [("scheduled-in-cluster", "scheduled"), ("recover-in-cluster", "recover")]
)
def test_the_in_cluster_fleet_deployments_mirror_the_process_ones_inactive_and_without_triggers(
    in_cluster: str, twin: str
) -> None:
    found = deployments()
    mine, theirs = found[in_cluster], found[twin]

    assert mine["entrypoint"] == theirs["entrypoint"] and mine["parameters"] == theirs["parameters"]
    assert [s | {"active": True} for s in mine["schedules"]] == theirs["schedules"]
    assert all(s["active"] is False for s in mine["schedules"])  # one rotation schedule at a time
    assert "triggers" not in mine  # recovery's triggers start `recover` only
    assert mine["work_pool"]["name"] == K8S_FLEET_POOL
    assert mine["work_pool"]["job_variables"] == {"finished_job_ttl": 3600}


def test_the_fleet_worker_polls_the_fleet_pool_and_observes_only_its_jobs() -> None:
    [deployment] = [d for d in yaml.safe_load_all(WORKER.read_text()) if d]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]

    assert args[args.index("--pool") + 1] == K8S_FLEET_POOL
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_ADDITIONAL_LABEL_FILTERS"] == (
        f"prefect.io/work-pool-name={K8S_FLEET_POOL}"
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "worker"  # the Prefect API's NetworkPolicy admits it
    assert labels["app.kubernetes.io/name"] != "mssql-auth-rotation"  # worker.yaml's selector: not these
