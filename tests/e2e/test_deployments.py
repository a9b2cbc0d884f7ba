"""prefect.yaml against a real local Prefect server: deploy, schedule, parameter form and validation,
and a process worker that executes runs triggered the three API ways (CLI, run_deployment, REST)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import tomllib
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from sandbox.cluster import Database, Sandbox
from sandbox.prefect_stack import K8S_FLEET_POOL, K8S_POOL, LOCAL_POOL, PREFECT, PROJECT_DIR, PrefectStack
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import assert_rotated, is_paused, logs_in

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT_S = 120.0
HEALING_BUDGET_S = 120.0  # the target: healed within 2 minutes of the kill


def deployments(stack: PrefectStack) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in stack.api("POST", "/deployments/filter", {})}


def wait_for_runs(stack: PrefectStack, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Poll the REST API until every run is in a terminal state (the API has no watch)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = {run_id: stack.api("GET", f"/flow_runs/{run_id}") for run_id in run_ids}
        if all(run["state_type"] in TERMINAL for run in runs.values()):
            return runs
        if time.monotonic() > deadline:
            pytest.fail(
                f"runs not finished after {RUN_TIMEOUT_S:.0f}s: {[r['state_type'] for r in runs.values()]}"
            )
        time.sleep(0.5)


def test_prefect_deploy_registers_the_fleet_schedules_and_the_manual_and_in_cluster_rotations(
    stack: PrefectStack,
) -> None:
    found = deployments(stack)

    assert set(found) == {
        "scheduled",
        "recover",
        "manual",
        "in-cluster",
        "scheduled-in-cluster",
        "recover-in-cluster",
    }
    flows = {f["id"]: f["name"] for f in stack.api("POST", "/flows/filter", {})}
    assert {name: flows[d["flow_id"]] for name, d in found.items()} == {
        "scheduled": "rotate-mssql-fleet",
        "recover": "rotate-mssql-fleet",
        "manual": "rotate-mssql-auth",
        "in-cluster": "rotate-mssql-auth",
        "scheduled-in-cluster": "rotate-mssql-fleet",
        "recover-in-cluster": "rotate-mssql-fleet",
    }
    [daily] = found["scheduled"]["schedules"]
    assert daily["schedule"]["cron"] == "0 3 * * *" and daily["schedule"]["timezone"] == "UTC"
    assert daily["active"] is True
    assert found["scheduled"]["parameters"] == {"mode": "rotate", "max_age": "30d", "concurrency": 5}
    [every_ten_minutes] = found["recover"]["schedules"]
    assert every_ten_minutes["schedule"]["interval"] == 600
    assert found["recover"]["parameters"] == {"mode": "recover"}
    # The in-cluster fleet: the same schedules and parameters, shipped inactive (one rotation schedule
    # at a time; deployments/README.md says how to switch over).
    for name, twin in (("scheduled-in-cluster", "scheduled"), ("recover-in-cluster", "recover")):
        assert found[name]["parameters"] == found[twin]["parameters"], name
        [mine], [theirs] = found[name]["schedules"], found[twin]["schedules"]
        when = {k: v for k, v in mine["schedule"].items() if k != "anchor_date"}  # the deploy's moment
        assert when == {k: v for k, v in theirs["schedule"].items() if k != "anchor_date"}, name
        assert mine["active"] is False, name
        assert found[name]["work_pool_name"] == K8S_FLEET_POOL
        assert found[name]["job_variables"] == {"finished_job_ttl": 3600}
    assert found["recover-in-cluster"]["global_concurrency_limit"]["limit"] == 1
    assert found["recover-in-cluster"]["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    # Recovery's triggers start `recover` only: never an in-cluster deployment.
    automations = stack.api("POST", "/automations/filter", {})
    assert automations
    assert any("prefect.flow-run.Crashed" in a["trigger"]["expect"] for a in automations)
    for automation in automations:
        assert {action["deployment_id"] for action in automation["actions"]} == {found["recover"]["id"]}
    assert found["manual"]["schedules"] == []
    assert all(d["enforce_parameter_schema"] for d in found.values())
    assert found["manual"]["work_pool_name"] == LOCAL_POOL
    assert found["in-cluster"]["work_pool_name"] == K8S_POOL
    # The pool's template fixes image, command, namespace and identity; a run may only set the TTL.
    assert found["in-cluster"]["job_variables"] == {"finished_job_ttl": 3600}
    pools = {p["name"]: p for p in stack.api("POST", "/work_pools/filter", {})}
    assert pools[LOCAL_POOL]["type"] == "process"
    # Each kubernetes pool runs its Jobs in namespace mssql-auth-rotation under its own identity.
    for pool, account in ((K8S_POOL, "mssql-auth-rotation"), (K8S_FLEET_POOL, "mssql-auth-rotation-fleet")):
        assert pools[pool]["type"] == "kubernetes"
        job = pools[pool]["base_job_template"]["job_configuration"]
        assert job["namespace"] == "mssql-auth-rotation"
        assert job["job_manifest"]["spec"]["template"]["spec"]["serviceAccountName"] == account, pool


def test_every_parameter_of_the_form_has_a_title_and_a_description(stack: PrefectStack) -> None:
    schema = deployments(stack)["manual"]["parameter_openapi_schema"]

    assert schema["required"] == ["namespace", "database"]
    for name, prop in schema["properties"].items():
        assert prop.get("title"), name
        assert prop.get("description"), name


@pytest.mark.parametrize(
    ("parameters", "why"),
    [
        ({"namespace": "demo", "database": "mssql-demo", "apply": "Sometimes"}, "unknown apply"),
        ({"namespace": "demo", "database": "mssql-demo", "timeout": "5 minutes"}, "malformed timeout"),
        ({"namespace": "", "database": "mssql-demo"}, "empty namespace"),
        ({"namespace": "demo", "database": ""}, "empty database"),
        ({"namespace": "demo"}, "missing database"),
    ],
)
def test_the_server_rejects_a_run_with_invalid_parameters(
    stack: PrefectStack, parameters: dict[str, str], why: str
) -> None:
    manual = deployments(stack)["manual"]

    with pytest.raises(urllib.error.HTTPError) as refused:
        stack.api("POST", f"/deployments/{manual['id']}/create_flow_run", {"parameters": parameters})

    assert 400 <= refused.value.code < 500, why
    runs = stack.api("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [manual["id"]]}}})
    assert all(run["parameters"] != parameters for run in runs)


def test_a_worker_runs_rotations_triggered_by_the_cli_run_deployment_and_the_rest_api(
    stack: PrefectStack, make_database: DatabaseFactory
) -> None:
    by_cli, by_python, by_rest = (
        make_database(replicas=3),
        make_database(replicas=3),
        make_database(replicas=1),
    )
    olds = {db.name: db.secret_data()["password"] for db in (by_cli, by_python, by_rest)}
    manual = deployments(stack)["manual"]

    cli = stack.prefect(
        "deployment",
        "run",
        "rotate-mssql-auth/manual",
        "--param",
        f"namespace={by_cli.namespace}",
        "--param",
        f"database={by_cli.name}",
    )
    cli_run = cli.stdout.split("UUID:")[1].split()[0]
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        python_run = run_deployment(
            "rotate-mssql-auth/manual",
            parameters={"namespace": by_python.namespace, "database": by_python.name},
            timeout=0,
        )
    assert isinstance(python_run, FlowRun)
    rest_run = stack.api(
        "POST",
        f"/deployments/{manual['id']}/create_flow_run",
        {"parameters": {"namespace": by_rest.namespace, "database": by_rest.name, "timeout": "2m"}},
    )

    runs = wait_for_runs(stack, [cli_run, str(python_run.id), rest_run["id"]])

    assert [run["state_type"] for run in runs.values()] == ["COMPLETED"] * 3
    for db in (by_cli, by_python, by_rest):
        assert_rotated(db, olds[db.name])


def test_two_runs_of_the_same_database_started_at_once_never_corrupt_it(
    stack: PrefectStack, make_database: DatabaseFactory
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    manual = deployments(stack)["manual"]
    params = {"parameters": {"namespace": db.namespace, "database": db.name}}
    ids: list[str] = []
    starters = [
        threading.Thread(
            target=lambda: ids.append(
                stack.api("POST", f"/deployments/{manual['id']}/create_flow_run", params)["id"]
            )
        )
        for _ in range(2)
    ]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()

    runs = wait_for_runs(stack, ids)

    outcomes = sorted(run["state_type"] for run in runs.values())
    assert "COMPLETED" in outcomes
    for run in runs.values():
        if run["state_type"] != "COMPLETED":
            assert run["state_type"] == "FAILED"
            assert "already being rotated by prefect-flow-run/" in run["state"]["message"]
    secret = db.secret_data()
    assert "password.next" not in secret
    for pod in db.pods:
        assert logs_in(db, pod, secret["password"]) and not logs_in(db, pod, original)
    assert not is_paused(db)
    assert db.sandbox.coordination_leases(db.namespace) == []


def test_runs_on_the_worker_leave_no_password_in_the_servers_logs_runs_or_artifacts(
    stack: PrefectStack, sandbox: Sandbox
) -> None:
    """The session-wide leak check reads the test harness's server; this one reads the stack's."""
    texts: list[str] = []
    while page := stack.api("POST", "/logs/filter", {"limit": 200, "offset": len(texts)}):
        texts += [log["message"] for log in page]
    texts += [
        repr(run["parameters"]) + str(run["state"]) for run in stack.api("POST", "/flow_runs/filter", {})
    ]
    texts += [str(artifact["data"]) for artifact in stack.api("POST", "/artifacts/filter", {})]
    passwords = sandbox.known_passwords()

    assert len(texts) > 20 and passwords
    assert not [text for text in texts for password in passwords if password in text]


def flow_run_pid(run_id: str) -> int | None:
    """The process a process worker started for this flow run (found by its environment)."""
    wanted = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if wanted in environ.read_bytes().split(b"\0"):
                return int(environ.parent.name)
    return None


def healed(db: Database) -> bool:
    """Rotated, every pod Ready with the new password, resumed and unlocked: the end of a rotation."""
    secret = db.sandbox.core.read_namespaced_secret(f"{db.name}-auth", db.namespace)
    keys, notes = set(secret.data or {}), secret.metadata.annotations or {}
    return (
        "password.prev" in keys
        and "password.next" not in keys
        and "mssql-auth-rotation.kubedb.com/restart-pending" not in notes
        and not is_paused(db)
        and db.sandbox.coordination_leases(db.namespace) == []
        and db.sandbox.pods_ready(db.namespace, db.name)
    )


@proves(
    fault="SIGKILL of a rotation's flow-run process right after the first replica's ALTER LOGIN",
    where="the process a Prefect process worker started for a rotate-mssql-auth/manual run (local stack)",
    outcome="with nobody acting, the worker reports the run Crashed, prefect.yaml's trigger starts "
    "rotate-mssql-fleet/recover for that database, and it ends rotated, Ready, resumed and unlocked "
    "within 2 minutes (measured)",
)
def test_a_rotation_killed_on_a_worker_is_finished_without_anyone_acting(
    stack: PrefectStack, make_database: DatabaseFactory
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    for pod in db.pods:  # slow replies leave time to kill it between two replicas' ALTER LOGIN
        db.instance(pod).faults.reply_delay = 0.1
    manual = deployments(stack)["manual"]
    run = stack.api(
        "POST",
        f"/deployments/{manual['id']}/create_flow_run",
        {"parameters": {"namespace": db.namespace, "database": db.name}},
    )
    first = db.instance(db.pods[0])
    db.sandbox.wait_for(
        lambda: any(b.kind == "alter-login" for b in first.batches), "the first ALTER LOGIN", timeout=120
    )
    pid = flow_run_pid(run["id"])
    assert pid is not None, "the flow run's process was not found"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for pod in db.pods:
        db.instance(pod).faults.reply_delay = 0

    db.sandbox.wait_for(lambda: healed(db), "the database healed", timeout=HEALING_BUDGET_S)
    took = time.monotonic() - killed_at

    assert stack.api("GET", f"/flow_runs/{run['id']}")["state_type"] == "CRASHED"
    recover = deployments(stack)["recover"]
    recoveries = stack.api(
        "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [recover["id"]]}}}
    )
    # Other tests of this stack stop runs too (each a trigger's recover run): count this database's.
    expected = f"rotate-auth {db.namespace}/{db.name}"
    assert [r["parameters"]["database"] for r in recoveries].count(expected) == 1
    assert_rotated(db, original)
    print(f"healed {took:.1f} s after the kill")  # the measured number, for docs/performance.md


def test_every_deployment_carries_the_release_as_its_version(stack: PrefectStack) -> None:
    release = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["version"]

    found = deployments(stack)

    assert {name: d["version"] for name, d in found.items()} == dict.fromkeys(found, release)


@proves(
    fault="recover runs piling up while none can run (a worker outage: each comes due every 10 minutes)",
    where="rotate-mssql-fleet/recover on the local Prefect server, two runs proposed Pending",
    outcome="one at a time: the deployment's concurrency limit 1 (CANCEL_NEW) cancels the newcomer "
    "instead of queueing it",
)
def test_recover_runs_one_at_a_time_and_cancels_the_ones_that_pile_up(stack: PrefectStack) -> None:
    recover = deployments(stack)["recover"]
    assert recover["global_concurrency_limit"]["limit"] == 1
    assert recover["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    # A paused queue of the pool: the worker leaves these runs alone, as it would during an outage.
    queue = f"outage-{uuid.uuid4().hex[:6]}"
    stack.api("POST", f"/work_pools/{LOCAL_POOL}/queues", {"name": queue, "is_paused": True})
    first, second = (
        stack.api("POST", f"/deployments/{recover['id']}/create_flow_run", {"work_queue_name": queue})
        for _ in range(2)
    )
    try:
        taken = stack.api("POST", f"/flow_runs/{first['id']}/set_state", {"state": {"type": "PENDING"}})
        refused = stack.api("POST", f"/flow_runs/{second['id']}/set_state", {"state": {"type": "PENDING"}})

        assert taken["status"] == "ACCEPT"
        assert refused["status"] == "REJECT" and refused["state"]["type"] == "CANCELLED"
        assert stack.api("GET", f"/flow_runs/{second['id']}")["state_type"] == "CANCELLED"
    finally:
        stack.api(
            "POST", f"/flow_runs/{first['id']}/set_state", {"state": {"type": "CANCELLED"}, "force": True}
        )


@proves(
    fault="prefect deploy run by a script whose $PWD is another folder; and with --prefect-file from "
    "a folder that is not the checkout",
    where="prefect.yaml's build step (rotation/release.py), on the local stack",
    outcome="the registered working directory is the checkout whatever $PWD says, and the worker's run "
    "rotates (each pod's tasks named after it); from another folder the deploy is refused, naming "
    "the checkout, and nothing is registered",
)
def test_a_deploy_from_anywhere_registers_the_checkout_and_its_runs_work(
    stack: PrefectStack, make_database: DatabaseFactory, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "ci-workspace"
    shutil.copytree(PROJECT_DIR / "flows", elsewhere / "flows")  # even with the flows' files there

    deployed = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "manual"],
        cwd=PROJECT_DIR,
        env=stack.env(PWD=str(elsewhere)),  # a script's cwd is the checkout; its inherited $PWD is not
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    manual = deployments(stack)["manual"]
    assert manual["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}
    ]
    refused = subprocess.run(
        [
            PREFECT,
            "--no-prompt",
            "deploy",
            "--name",
            "manual",
            "--prefect-file",
            str(PROJECT_DIR / "prefect.yaml"),
        ],
        cwd=elsewhere,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert refused.returncode != 0
    assert f"prefect deploy runs in {elsewhere}, which is not the mssql-auth-rotation checkout" in (
        refused.stdout + refused.stderr
    )
    assert deployments(stack)["manual"]["updated"] == manual["updated"]

    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    run = stack.api(
        "POST",
        f"/deployments/{manual['id']}/create_flow_run",
        {"parameters": {"namespace": db.namespace, "database": db.name}},
    )
    assert wait_for_runs(stack, [run["id"]])[run["id"]]["state_type"] == "COMPLETED"
    assert_rotated(db, original)
    names = {
        t["name"]
        for t in stack.api("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    }
    assert {f"{step} {pod}" for pod in db.pods for step in ("evict-pod", "check-pod-running")} <= names
