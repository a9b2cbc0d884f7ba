"""The production path: the kubernetes work pool's Job, under the identity of deployments/rbac.yaml.

Everything here is what a team runs, on the sandbox's real controllers: `kubectl apply` of the shipped
manifests; a Prefect kubernetes worker (prefect-kubernetes) first as a local process with the
`prefect-worker` ServiceAccount's token, then as the pod of deployments/worker.yaml; the worker creates
the Job of deployments/k8s-base-job-template.json; the real Job controller makes its pod, the real
scheduler binds it, and the sandbox's kubelet runs the project's image as a process of this checkout
(sandbox/process_pods.py: the ServiceAccount's token where the kubernetes client's in-cluster config
reads it, the checkout at the image's /opt/mssql-auth-rotation). The API server's audit log says who
changed the database's secret. The TTL controller removes the finished Job.

Only what a team would also set differs from the shipped files: the `prefect-worker` ConfigMap's API
URL (this stack's plain-http server instead of https://prefect-server.prefect.svc) and the worker's
health port (several sandboxes share this machine's network).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from sandbox.cluster import Database, Sandbox
from sandbox.controlplane import free_port
from sandbox.in_cluster import (
    BRIDGE_LABEL,
    DEPLOYMENTS,
    FLOW_IDENTITY,
    NAMESPACE,
    WORKER_LABEL,
    apply,
    bridge_manifests,
    grant_database,
    kubectl,
    manifests,
    prepare_identity,
    running_pods,
    worker_manifests,
)
from sandbox.prefect_stack import K8S_POOL, PREFECT, PROJECT_DIR, PrefectStack
from tests.e2e.conftest import DatabaseFactory
from tests.e2e.test_deployments import deployments, wait_for_runs
from tests.fault_matrix import proves
from tests.support import assert_rotated, assert_untouched

IDENTITY_NS = NAMESPACE
FINISHED_JOB_TTL_S = 60  # the smallest the template allows: the TTL controller deletes the Job then
WAIT_S = 120.0
FINISHED_JOBS: dict[str, str] = {}  # run id -> its Job, which the TTL controller must delete


def grant(sandbox: Sandbox, db: Database, *extra: str) -> None:
    grant_database(sandbox, db.namespace, db.name, db.replicas, *extra)


@pytest.fixture(scope="module")
def in_cluster(sandbox: Sandbox, stack: PrefectStack) -> None:
    """rbac.yaml applied, and the CA ConfigMap and auth Secret the manifests mount."""
    prepare_identity(sandbox)


def _worker_env(stack: PrefectStack, kubeconfig: Path) -> dict[str, str]:
    return stack.env(
        KUBECONFIG=str(kubeconfig),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES=IDENTITY_NS,
    )


def _start_run(stack: PrefectStack, db: Database) -> str:
    deployment = deployments(stack)["in-cluster"]
    run = stack.api(
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        {
            "parameters": {"namespace": db.namespace, "database": db.name},
            "job_variables": {"finished_job_ttl": FINISHED_JOB_TTL_S},
        },
    )
    return str(run["id"])


def _job_of(sandbox: Sandbox, run_id: str) -> client.V1Job | None:
    jobs = (
        client.BatchV1Api(sandbox.api)
        .list_namespaced_job(IDENTITY_NS, label_selector=f"prefect.io/flow-run-id={run_id}")
        .items
    )
    return jobs[0] if jobs else None


def _writers_of_secret(sandbox: Sandbox, db: Database) -> set[str]:
    """Who wrote the database's auth secret, from the API server's audit log."""
    return sandbox.control_plane.audit_users(
        namespace=db.namespace, resource="secrets", name=f"{db.name}-auth", verbs={"update", "patch"}
    )


def _assert_rotated_by_the_job(
    sandbox: Sandbox, stack: PrefectStack, db: Database, run_id: str, old: str
) -> None:
    run = wait_for_runs(stack, [run_id])[run_id]
    assert run["state_type"] == "COMPLETED", f"the in-cluster run ended {run['state_name']}: {run['state']}"
    assert_rotated(db, old)
    job = _job_of(sandbox, run_id)
    assert job is not None, "the run left no Job (was it run by the kubernetes worker?)"
    assert job.spec.ttl_seconds_after_finished == FINISHED_JOB_TTL_S
    # The pod's process exits a moment after the run reports Completed; the Job controller then counts it.
    sandbox.wait_for(
        lambda: (_job_of(sandbox, run_id) or job).status.succeeded == 1, "the Job to succeed", WAIT_S
    )
    [pod] = sandbox.core.list_namespaced_pod(
        IDENTITY_NS, label_selector=f"job-name={job.metadata.name}"
    ).items
    assert pod.spec.service_account_name == "mssql-auth-rotation"  # the template's identity
    assert pod.status.phase == "Succeeded"
    assert _writers_of_secret(sandbox, db) == {FLOW_IDENTITY}, "the secret was written by another identity"
    FINISHED_JOBS[run_id] = job.metadata.name  # their Jobs' deletion is checked last (the TTL is a minute)


@pytest.fixture(scope="module")
def worker_pod(sandbox: Sandbox, stack: PrefectStack, in_cluster: None) -> Iterator[None]:
    """deployments/worker.yaml applied: the worker runs as the pod of its Deployment."""
    apply(sandbox, worker_manifests(sandbox, stack.api_url, free_port()))
    try:
        sandbox.wait_for(lambda: bool(running_pods(sandbox, WORKER_LABEL)), "the worker's pod to run", WAIT_S)
        yield
    finally:
        kubectl(sandbox, "delete", "deployment", "prefect-worker", "-n", IDENTITY_NS, "--wait=false")
        sandbox.wait_for(lambda: not _worker_pods(sandbox), "the worker's pod to be gone", WAIT_S)


def _worker_pods(sandbox: Sandbox) -> list[client.V1Pod]:
    return list(sandbox.core.list_namespaced_pod(IDENTITY_NS, label_selector=WORKER_LABEL).items)


def test_a_local_kubernetes_worker_runs_the_in_cluster_deployment_as_a_job_under_the_templates_identity(
    sandbox: Sandbox, stack: PrefectStack, in_cluster: None, make_database: DatabaseFactory
) -> None:
    db = make_database(replicas=3)
    grant(sandbox, db)
    # worker.yaml's RBAC (not its Deployment); the worker authenticates with its ServiceAccount's token.
    apply(
        sandbox,
        [d for d in worker_manifests(sandbox, stack.api_url, free_port()) if d["kind"] != "Deployment"],
    )
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", K8S_POOL, "--type", "kubernetes", "--install-policy", "never"],
        cwd=PROJECT_DIR,
        env=_worker_env(stack, sandbox.service_account_kubeconfig(IDENTITY_NS, "prefect-worker")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        old = db.secret_data()["password"]
        run_id = _start_run(stack, db)
        _assert_rotated_by_the_job(sandbox, stack, db, run_id, old)
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_the_worker_as_the_pod_of_worker_yaml_runs_the_in_cluster_deployment(
    sandbox: Sandbox, stack: PrefectStack, worker_pod: None, make_database: DatabaseFactory
) -> None:
    db = make_database(replicas=3)
    grant(sandbox, db)
    old = db.secret_data()["password"]
    run_id = _start_run(stack, db)
    _assert_rotated_by_the_job(sandbox, stack, db, run_id, old)


def test_the_bridge_as_the_deployment_of_bridge_yaml_carries_a_kubectl_applied_request_to_successful(
    sandbox: Sandbox, stack: PrefectStack, worker_pod: None, tmp_path: Path
) -> None:
    docs = bridge_manifests(sandbox, stack.api_url, stack.ui_url)  # the image and the API: a team's settings
    namespace = f"bridged-{uuid.uuid4().hex[:6]}"
    example = manifests(DEPLOYMENTS / "examples" / "rotate-auth.yaml")[0]
    example["metadata"]["namespace"] = namespace
    db = sandbox.create_database(namespace, example["spec"]["databaseRef"]["name"], replicas=1)
    grant(sandbox, db, "--ops-requests")  # the run also writes the request's status
    original = db.secret_data()["password"]
    apply(sandbox, docs)
    try:
        sandbox.wait_for(lambda: bool(running_pods(sandbox, BRIDGE_LABEL)), "the bridge's pod to run", WAIT_S)
        apply(sandbox, [example])
        name = example["metadata"]["name"]

        def phase() -> str:
            request = sandbox.custom.get_namespaced_custom_object(
                "ops.kubedb.com", "v1alpha1", namespace, "mssqlserveropsrequests", name
            )
            return str(request.get("status", {}).get("phase", ""))

        sandbox.wait_for(lambda: phase() in ("Successful", "Failed"), f"request {name} to end", WAIT_S)
        assert phase() == "Successful", sandbox.pod_log(IDENTITY_NS, _bridge_pod(sandbox))
        assert_rotated(db, original)
    finally:
        kubectl(
            sandbox, "delete", "deployment", "mssql-auth-rotation-bridge", "-n", IDENTITY_NS, "--wait=false"
        )


def _bridge_pod(sandbox: Sandbox) -> str:
    pods = sandbox.core.list_namespaced_pod(IDENTITY_NS, label_selector=BRIDGE_LABEL).items
    return str(pods[0].metadata.name) if pods else "?"


def test_the_finished_jobs_are_deleted_after_their_ttl_with_their_pods(sandbox: Sandbox) -> None:
    assert FINISHED_JOBS, "no run of this module finished"
    sandbox.wait_for(
        lambda: all(_job_of(sandbox, run_id) is None for run_id in FINISHED_JOBS),
        "the TTL controller to delete the finished Jobs",
        FINISHED_JOB_TTL_S + WAIT_S,
    )

    def pods_left() -> list[str]:  # the garbage collector deletes the pods the Jobs owned
        pods = sandbox.core.list_namespaced_pod(IDENTITY_NS, label_selector="job-name").items
        return [p.metadata.name for p in pods if p.metadata.labels["job-name"] in FINISHED_JOBS.values()]

    sandbox.wait_for(lambda: not pods_left(), "the Jobs' pods to be deleted", WAIT_S)


@proves(
    fault="a drained node: the eviction of an in-cluster rotation's Job pod right after the first "
    "replica's ALTER LOGIN",
    where="the Job the kubernetes worker (the pod of worker.yaml) created from the base job template, "
    "on the real Job controller (1.20: a deleted pod may be replaced despite backoffLimit 0); the "
    "eviction API; the pod's process gets SIGTERM as PID 1",
    outcome="relinquish: the password is rolled back on every replica, the database resumed and "
    "unlocked by the evicted pod's own process; when the Job controller replaces the pod, the second "
    "attempt (same flow run, run_count 2) only finishes an interrupted rotation: it ends Skipped and "
    "sends no ALTER LOGIN, so nothing is rotated twice",
)
def test_an_evicted_rotation_pod_rolls_back_resumes_unlocks_and_is_never_run_again(
    sandbox: Sandbox, stack: PrefectStack, worker_pod: None, make_database: DatabaseFactory
) -> None:
    db = make_database(replicas=3)
    grant(sandbox, db)
    original = db.secret_data()["password"]
    for pod in db.pods:  # slow replies leave time to evict it between two replicas' ALTER LOGIN
        db.instance(pod).faults.reply_delay = 0.1
    run_id = _start_run(stack, db)
    first = db.instance(db.pods[0])
    sandbox.wait_for(
        lambda: any(b.kind == "alter-login" for b in first.batches), "the first ALTER LOGIN", WAIT_S
    )
    job = _job_of(sandbox, run_id)
    assert job is not None
    [pod] = sandbox.core.list_namespaced_pod(
        IDENTITY_NS, label_selector=f"job-name={job.metadata.name}"
    ).items
    name = pod.metadata.name
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=IDENTITY_NS))
    sandbox.core.create_namespaced_pod_eviction(name, IDENTITY_NS, eviction)
    for replica in db.pods:
        db.instance(replica).faults.reply_delay = 0

    def job_ended() -> bool:  # a Job's end: its Complete or Failed condition
        conditions = (_job_of(sandbox, run_id) or job).status.conditions or []
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)

    sandbox.wait_for(job_ended, "the Job to end", WAIT_S)
    run = wait_for_runs(stack, [run_id])[run_id]
    history = [
        (s["type"], s["name"], s["timestamp"][11:23])
        for s in stack.api("GET", f"/flow_run_states/?flow_run_id={run_id}")
    ]
    assert_untouched(db, original)  # rolled back, resumed, unlocked; never rotated by a second attempt
    if run["run_count"] > 1:  # the Job controller replaced the evicted pod: the run was executed again
        assert (run["state_type"], run["state_name"]) == ("COMPLETED", "Skipped"), history
    else:
        assert run["state_type"] == "CRASHED", history  # the worker's observer: the Job failed
