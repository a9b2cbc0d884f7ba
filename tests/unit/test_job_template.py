"""The kubernetes pool's base job template (deployments/k8s-base-job-template.json) as prefect-kubernetes
renders it for a flow run: what a drained or evicted rotation pod does on SIGTERM, and whether it has
the time to do it.

Rendered offline with prefect-kubernetes' own code, as its worker does for each flow run
(``KubernetesWorkerJobConfiguration.from_template_and_values`` + ``prepare_for_flow_run``); the
Prefect client it is given points at a closed port, so any call to an API would fail the test.
tests/e2e/test_job_signals.py runs a flow-run process with the environment rendered here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from rotation import kube
from rotation.params import RotationRequest
from sandbox.prefect_stack import K8S_BASE_JOB_TEMPLATE
from tasks import _policy, lock

SIGTERM_BEHAVIOR = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"
# What a run may try to set; the server refuses it where it checks job variables (test_rbac.py), and
# on the paths where it does not, the rendering must ignore it.
HOSTILE_ENV = {SIGTERM_BEHAVIOR: "reschedule", "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE": "true"}
REPLICAS = 3  # the example database's; the deadline is checked for it


def template() -> dict[str, Any]:
    return json.loads(K8S_BASE_JOB_TEMPLATE.read_text())  # type: ignore[no-any-return]


def render(base: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    async def rendered() -> dict[str, Any]:
        nowhere = PrefectClient("http://127.0.0.1:9/api")  # nothing listens on port 9
        configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
            base, job_variables, client=nowhere
        )
        run = FlowRun(flow_id=uuid.uuid4(), name="rotate-auth demo/mssql-demo")
        configuration.prepare_for_flow_run(run)
        return dict(configuration.job_manifest)

    return asyncio.run(rendered())


def container_env(job: dict[str, Any]) -> dict[str, str]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), names  # one value each, no shadowing
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("job_variables", [{}, {"env": HOSTILE_ENV}], ids=["as-deployed", "hostile-env"])
def test_a_rotation_pod_relinquishes_on_sigterm_whatever_a_run_asks(job_variables: dict[str, Any]) -> None:
    """`relinquish`: `prefect flow-run execute` forwards the SIGTERM to the flow (its finally runs) and
    proposes no state; the Job fails (backoffLimit 0) and prefect-kubernetes' observer marks the run
    Crashed. Never `reschedule`, which prefect-kubernetes injects for backoffLimit 0 by default."""
    job = render(template(), job_variables)

    env = container_env(job)
    assert env[SIGTERM_BEHAVIOR] == "relinquish"
    assert env["MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE"] == "false"
    assert job["spec"]["backoffLimit"] == 0  # no second pod under the same flow-run id


def test_the_setting_only_takes_effect_in_the_job_configurations_env() -> None:
    """Why it is in job_configuration.env: put only in the container's env, prefect-kubernetes adds its
    own `reschedule` and drops the template's value (this test fails if that ever changes)."""
    base = template()
    setting = base["job_configuration"].pop("env")
    container = base["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [*container["env"], *setting]

    assert container_env(render(base, {}))[SIGTERM_BEHAVIOR] == "reschedule"


def finally_budget_s(timeout_s: float) -> float:
    """The longest the rotation's `finally` (resume-database, then release-lock) may take.

    Each task retries a transient fault while its step's timeout lasts since its first attempt
    (tasks/_policy.py), so its last attempt starts at most one jittered backoff after the timeout,
    and takes at most its own calls' timeouts: resume-database makes 4 API calls (read, Event,
    status patch, Event; rotation/kube.py's REQUEST_TIMEOUT each, no urllib3 retries),
    release-lock 2 Lease calls (read, replace; within the lock's call timeout).
    """
    last_backoff = max(_policy.BACKOFF_S) * (1 + float(_policy.RETRYING["retry_jitter_factor"]))
    call_s = float(sum(kube.REQUEST_TIMEOUT))
    resume = timeout_s + last_backoff + 4 * call_s
    release = timeout_s + last_backoff + 2 * lock.call_timeout(lock.lease_seconds())
    return resume + release


def rotation_steps(replicas: int) -> int:
    """Steps of a whole rotation, each with the request's timeout: inspect, lock, pause, stage, set,
    verify, commit, update-petsets, per pod get/evict/check, final check, resume, unlock."""
    return 8 + 3 * replicas + 3


def test_the_grace_period_covers_the_finallys_budget_and_the_deadline_a_whole_rotation() -> None:
    default_timeout = RotationRequest(namespace="demo", database="mssql-demo").timeout_seconds
    job = render(template(), {})
    grace = job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    deadline = job["spec"]["activeDeadlineSeconds"]

    assert finally_budget_s(default_timeout) == pytest.approx(765.0)  # the number deployments/README.md gives
    assert grace > finally_budget_s(default_timeout)
    assert deadline >= rotation_steps(REPLICAS) * default_timeout + grace
