"""``python -m rotation rbac`` as a user runs it (a subprocess): YAML on stdout, or a clear error and
nothing on stdout; and the committed example grant is exactly what its own command prints."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deployments" / "rbac-mssql-demo.yaml"
BASE = ["--namespace", "demo", "--database", "mssql-demo", "--replicas", "3"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotation", "rbac", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_prints_a_role_a_role_binding_and_the_lock_as_yaml() -> None:
    done = run(*BASE, "--user-secret", "a", "--user-secret", "b", "--tls-secret", "ca")

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    role, binding, lease = yaml.safe_load_all(done.stdout)
    assert (role["kind"], binding["kind"], lease["kind"]) == ("Role", "RoleBinding", "Lease")
    assert lease["metadata"] == lease["metadata"] | {"name": "mssql-demo-rotate-auth", "namespace": "demo"}
    assert "spec" not in lease  # no holder
    secrets = {r["verbs"][0]: set(r["resourceNames"]) for r in role["rules"] if r["resources"] == ["secrets"]}
    assert secrets == {"get": {"mssql-demo-auth", "a", "b", "ca"}, "update": {"mssql-demo-auth", "a", "b"}}


def test_restart_workload_grants_patch_of_exactly_the_named_workloads() -> None:
    done = run(*BASE, "--restart-workload", "deployment/app", "--restart-workload", "StatefulSet/db-client")

    assert done.returncode == 0, done.stderr
    role, _, _ = yaml.safe_load_all(done.stdout)
    apps = {(tuple(r["resources"]), tuple(r["verbs"])): r.get("resourceNames") for r in role["rules"]}
    apps = {key: names for key, names in apps.items() if key[0][0] in ("deployments", "statefulsets")}
    assert apps == {
        (("deployments", "statefulsets", "daemonsets"), ("list",)): None,
        (("deployments",), ("patch",)): ["app"],
        (("statefulsets",), ("patch",)): ["db-client"],
    }
    command = done.stdout.splitlines()[1]
    assert command.endswith("--restart-workload deployment/app --restart-workload statefulset/db-client")


def test_the_committed_example_is_what_its_command_prints() -> None:
    """deployments/rbac-mssql-demo.yaml can never drift from the generator: regenerate it with the
    command on its second line."""
    committed = EXAMPLE.read_text()
    command = committed.splitlines()[1].removeprefix("#   ")
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "rotation", "rbac"], command
    assert argv[4:] == [*BASE, "--user-secret", "mssql-demo-new-auth"], "the example is demo/mssql-demo"

    done = run(*argv[4:])

    assert done.returncode == 0, done.stderr
    assert done.stdout == committed, (
        f"deployments/rbac-mssql-demo.yaml is stale: run `{command} > {EXAMPLE.name}`"
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--namespace", "Demo", "--database", "x", "--replicas", "1"], "'Demo'"),
        (["--namespace", "demo", "--database", "bad_name", "--replicas", "1"], "'bad_name'"),
        ([*BASE, "--user-secret", "Bad.Secret"], "'Bad.Secret'"),
        ([*BASE, "--tls-secret", "mssql-demo-auth"], "'mssql-demo-auth'"),
        (["--namespace", "demo", "--database", "x", "--replicas", "0"], "--replicas 0"),
        (["--namespace", "demo", "--database", "x", "--replicas", "three"], "'three'"),
        (["--namespace", "demo", "--database", "x"], "--replicas"),
        ([*BASE, "--service-account-namespace", "a_b"], "'a_b'"),
        ([*BASE, "--restart-workload", "cronjob/nightly"], "'cronjob/nightly'"),
        ([*BASE, "--restart-workload", "deployment/App"], "'deployment/App'"),
    ],
)
def test_a_bad_argument_exits_non_zero_naming_it_and_prints_nothing(args: list[str], named: str) -> None:
    done = run(*args)

    assert done.returncode == 2
    assert done.stdout == ""
    assert "error:" in done.stderr and named in done.stderr, done.stderr
