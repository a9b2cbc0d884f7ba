"""A drained or evicted in-cluster rotation: its pod's flow-run process gets SIGTERM mid-rotation.

The sandbox has no kubelet or Job controller, so no pod runs. What the pod would run is run here,
as the pod would run it: the container's args (``prefect flow-run execute``) with the environment
prefect-kubernetes renders from deployments/k8s-base-job-template.json for the run, as PID 1 of a
PID namespace of its own (``unshare``), like a container's main process, against the stack's real
Prefect server. Kubernetes' kubelet sends the SIGTERM to PID 1 only, as this test does.

The run belongs to a copy of the ``in-cluster`` deployment whose pull step points at this checkout
instead of the image's /opt/mssql-auth-rotation (nothing else differs).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_kubernetes.worker import KubernetesWorker

from sandbox.cluster import Database, Sandbox
from sandbox.prefect_stack import K8S_POOL, PREFECT, PROJECT_DIR, PrefectStack
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import assert_untouched

SIGTERM_BEHAVIOR = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"
EXIT_TIMEOUT_S = 60.0  # Prefect's supervisor SIGKILLs its flow 30 s after forwarding a SIGTERM
# The pod's CA file for an https API; the stack's API is plain http on loopback.
POD_ONLY_ENV = {"PREFECT_API_SSL_CERT_FILE"}


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


AS_PID_1 = ["unshare", "--pid", "--fork", "--mount-proc"] if _unshare_works() else []


def job_deployment(stack: PrefectStack) -> dict[str, Any]:
    """A copy of the in-cluster deployment (its flow, entrypoint, pool and job variables) that runs
    from this checkout."""
    [in_cluster] = [d for d in stack.api("POST", "/deployments/filter", {}) if d["name"] == "in-cluster"]
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}]
    return stack.api(  # type: ignore[no-any-return]
        "POST",
        "/deployments/",
        {
            "name": f"in-cluster-here-{uuid.uuid4().hex[:6]}",
            "flow_id": in_cluster["flow_id"],
            "entrypoint": in_cluster["entrypoint"],
            "work_pool_name": K8S_POOL,  # no worker polls it here: only this test executes its runs
            "job_variables": in_cluster["job_variables"],
            "enforce_parameter_schema": True,
            "pull_steps": pull,
        },
    )


def rendered_job(stack: PrefectStack, run_id: str) -> dict[str, Any]:
    """The Job prefect-kubernetes' worker would create for this run (template + job variables,
    then prepared for the run)."""

    async def render() -> dict[str, Any]:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            async with get_client() as prefect:
                run = await prefect.read_flow_run(uuid.UUID(run_id))
                pool = await prefect.read_work_pool(K8S_POOL)
                configuration = await KubernetesWorker.job_configuration.resolve_for_flow_run(
                    run, client=prefect, work_pool=pool, worker_name="test-job-signals"
                )
                assert run.deployment_id is not None
                deployment = await prefect.read_deployment(run.deployment_id)
                flow = await prefect.read_flow(run.flow_id)
                configuration.prepare_for_flow_run(run, deployment, flow, pool, "test-job-signals")
                return dict(configuration.job_manifest)

    return asyncio.run(render())


class JobProcess:
    """The pod's container process for one flow run: its args and rendered env, as PID 1."""

    def __init__(
        self, stack: PrefectStack, sandbox: Sandbox, run_id: str, log: Path, **override: str
    ) -> None:
        job = rendered_job(stack, run_id)
        [container] = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if e["name"] not in POD_ONLY_ENV}
        assert env["PREFECT__FLOW_RUN_ID"] == run_id and env["PREFECT_API_URL"] == stack.api_url
        self.rendered_env = dict(env)
        # The pod reaches the API server with its ServiceAccount; here, with the sandbox's kubeconfig.
        env = {**stack.env(), **env, "KUBECONFIG": str(sandbox.kubeconfig), **override}
        args = [PREFECT if arg == "prefect" else arg for arg in container["args"]]
        assert args == [PREFECT, "flow-run", "execute"]  # the run id comes from PREFECT__FLOW_RUN_ID
        self.process = subprocess.Popen(
            [*AS_PID_1, *args], env=env, cwd="/", stdout=log.open("ab"), stderr=subprocess.STDOUT
        )

    def pid_1(self) -> int:
        """The container's main process (unshare's child), which the kubelet signals."""
        if not AS_PID_1:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0])

    def wait(self) -> int:
        return self.process.wait(timeout=EXIT_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid_1(), signal.SIGKILL)  # SIGKILL of a PID namespace's init ends all of it
            self.process.wait()


def alter_logins(db: Database) -> int:
    return sum(1 for pod in db.pods for batch in db.instance(pod).batches if batch.kind == "alter-login")


def start_slow_rotation(stack: PrefectStack, make_database: DatabaseFactory) -> tuple[Database, str, str]:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    for pod in db.pods:  # slow replies leave time to signal it between two replicas' ALTER LOGIN
        db.instance(pod).faults.reply_delay = 0.1
    run = stack.api(
        "POST",
        f"/deployments/{job_deployment(stack)['id']}/create_flow_run",
        {"parameters": {"namespace": db.namespace, "database": db.name}},
    )
    return db, original, run["id"]


def sigterm_at_first_alter_login(db: Database, job: JobProcess) -> int:
    first = db.instance(db.pods[0])
    db.sandbox.wait_for(
        lambda: any(b.kind == "alter-login" for b in first.batches), "the first ALTER LOGIN", timeout=120
    )
    os.kill(job.pid_1(), signal.SIGTERM)
    for pod in db.pods:
        db.instance(pod).faults.reply_delay = 0
    return job.wait()


@proves(
    fault="SIGTERM to an in-cluster rotation's pod (a drain or an eviction) right after the first "
    "replica's ALTER LOGIN",
    where="`prefect flow-run execute` started as the Job's container would be (its args, the env "
    "prefect-kubernetes renders from deployments/k8s-base-job-template.json, PID 1 of its own PID "
    "namespace), against a real Prefect server",
    outcome="the SIGTERM reaches the flow (relinquish): the password is rolled back on every replica, "
    "the database resumed and unlocked before the process exits (status 1, the Job fails); the run "
    "is not rescheduled (run_count 1), so nothing runs again under its id, and prefect-kubernetes' "
    "observer marks it Crashed when the Job fails",
)
def test_a_sigterm_to_the_jobs_process_rolls_back_resumes_and_unlocks_and_never_reschedules(
    stack: PrefectStack, sandbox: Sandbox, make_database: DatabaseFactory, tmp_path: Path
) -> None:
    db, original, run_id = start_slow_rotation(stack, make_database)
    job = JobProcess(stack, sandbox, run_id, tmp_path / "job.log")
    try:
        assert job.rendered_env[SIGTERM_BEHAVIOR] == "relinquish"
        status = sigterm_at_first_alter_login(db, job)
    finally:
        job.kill()

    log = (tmp_path / "job.log").read_text(errors="replace")
    assert status == 1, log  # "Flow run relinquished to infrastructure retry."
    assert_untouched(db, original)  # rolled back, resumed, unlocked: by the flow's own finally
    run = stack.api("GET", f"/flow_runs/{run_id}")
    assert run["state_type"] not in ("SCHEDULED", "PENDING") and run["run_count"] == 1, run["state"]


@proves(
    fault="an in-cluster rotation's flow run executed a second time under the same id after a SIGTERM "
    "(an operator set PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule)",
    where="two `prefect flow-run execute` processes for one flow run, each started as the Job's "
    "container would be",
    outcome="the second attempt (run_count 2) only finishes an interrupted rotation: here the first "
    "had rolled back, so it sends no ALTER LOGIN, ends Skipped saying why, and the database keeps "
    "its password: never a second rotation",
)
def test_a_rescheduled_run_executed_again_under_its_id_never_rotates_twice(
    stack: PrefectStack, sandbox: Sandbox, make_database: DatabaseFactory, tmp_path: Path
) -> None:
    db, original, run_id = start_slow_rotation(stack, make_database)
    log = tmp_path / "job.log"
    first = JobProcess(stack, sandbox, run_id, log, **{SIGTERM_BEHAVIOR: "reschedule"})
    try:
        assert sigterm_at_first_alter_login(db, first) == 0, log.read_text(errors="replace")
    finally:
        first.kill()
    assert stack.api("GET", f"/flow_runs/{run_id}")["state_name"] == "AwaitingRetry"
    assert_untouched(db, original)
    sent = alter_logins(db)

    second = JobProcess(stack, sandbox, run_id, log, **{SIGTERM_BEHAVIOR: "reschedule"})
    try:
        status = second.wait()
    finally:
        second.kill()

    run = stack.api("GET", f"/flow_runs/{run_id}")
    assert status == 0 and run["run_count"] == 2, log.read_text(errors="replace")
    assert (run["state_type"], run["state_name"]) == ("COMPLETED", "Skipped"), run["state"]
    assert "this flow run already ran" in log.read_text(errors="replace")  # the rerun says why
    assert alter_logins(db) == sent  # no new rotation
    assert_untouched(db, original)
