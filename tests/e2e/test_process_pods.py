"""Generic pods (sandbox/process_pods.py): a pod of the project's image, created through the real API
server and bound to the sandbox's node, runs as a local process of this checkout with its command,
environment, working directory and service account; its exit code becomes the pod's phase, its
output the pod's log; a deletion sends SIGTERM to its PID 1; a pod of any other image stays Pending
with a Warning Event.

The processes are real (``unshare`` namespaces, ``python -c`` programs that use the official
``kubernetes`` client's in-cluster config against the real API server, where RBAC is real).
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import Sandbox
from sandbox.settings import PROJECT_IMAGE, Settings

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
RUN_TIMEOUT_S = 60.0  # a python process importing the kubernetes client, on a shared 2-core machine


def _image_of(manifest: dict[str, Any]) -> str:
    return str(manifest["spec"]["template"]["spec"]["containers"][0]["image"])


def test_the_default_project_image_is_the_one_the_deployments_run() -> None:
    [worker] = [
        d for d in yaml.safe_load_all((DEPLOYMENTS / "worker.yaml").read_text()) if d["kind"] == "Deployment"
    ]
    template = json.loads((DEPLOYMENTS / "k8s-base-job-template.json").read_text())
    job = template["job_configuration"]["job_manifest"]
    assert Settings().project_image == PROJECT_IMAGE == _image_of(worker) == _image_of(job)


@pytest.fixture
def pods(sandbox: Sandbox, namespace: str) -> Iterator[client.CoreV1Api]:
    """The admin's CoreV1Api; every pod of the test's namespace is deleted (and gone) afterwards."""
    yield sandbox.core
    sandbox.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=1)
    sandbox.wait_for(
        lambda: not sandbox.core.list_namespaced_pod(namespace).items, f"the pods of {namespace} gone"
    )


def pod_body(
    name: str,
    args: list[str],
    *,
    image: str = PROJECT_IMAGE,
    restart_policy: str = "Never",
    service_account: str | None = None,
    env: list[dict[str, Any]] | None = None,
    env_from: list[dict[str, Any]] | None = None,
    grace: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "args": args}
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    spec: dict[str, Any] = {"restartPolicy": restart_policy, "containers": [container]}
    if service_account:
        spec["serviceAccountName"] = service_account
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def python_pod(name: str, program: str, **options: Any) -> dict[str, Any]:
    return pod_body(name, ["python", "-c", textwrap.dedent(program)], **options)


def phase(core: client.CoreV1Api, namespace: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, namespace).status.phase)


def wait_phase(sandbox: Sandbox, namespace: str, name: str, wanted: str) -> client.V1Pod:
    sandbox.wait_for(
        lambda: phase(sandbox.core, namespace, name) == wanted, f"{namespace}/{name} {wanted}", RUN_TIMEOUT_S
    )
    return sandbox.core.read_namespaced_pod(name, namespace)


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    [status] = pod.status.container_statuses
    assert status.state.terminated is not None, status.state
    return status.state.terminated


def gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


IN_CLUSTER_PROGRAM = """
    import os, sys
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    config.load_incluster_config()
    core = client.CoreV1Api()
    namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    print("configmap", core.read_namespaced_config_map("visible", namespace).data["greeting"])
    try:
        core.list_namespaced_secret(namespace)
    except ApiException as exc:
        print("secrets refused", exc.status)
    else:
        sys.exit(3)
    print("cwd", os.getcwd(), "home", os.environ["HOME"], "writable", os.access(os.environ["HOME"], os.W_OK))
    print("checkout", os.path.exists("flows/rotate_auth.py"), "hostname", os.uname().nodename)
"""


def test_a_pod_of_the_project_image_runs_with_its_service_accounts_identity(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    rbac = client.RbacAuthorizationV1Api(sandbox.api)
    pods.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    pods.create_namespaced_config_map(
        namespace, {"metadata": {"name": "visible"}, "data": {"greeting": "hello"}}
    )
    pods.create_namespaced_pod(namespace, python_pod("reader", IN_CLUSTER_PROGRAM, service_account="reader"))

    pod = wait_phase(sandbox, namespace, "reader", "Succeeded")

    logs = sandbox.pod_log(namespace, "reader")
    assert terminated(pod).exit_code == 0, logs
    assert "configmap hello" in logs
    assert "secrets refused 403" in logs
    assert "cwd /opt/mssql-auth-rotation home /home/rotation writable True" in logs
    assert "checkout True hostname reader" in logs
    assert pod.status.pod_ip == "127.0.0.1"
    # What `kubectl logs` gets: the API server's pods/log, proxied to the kubelet's log endpoint.
    assert pods.read_namespaced_pod_log("reader", namespace) == logs


def test_a_failing_command_fails_the_pod_with_its_exit_code(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    pods.create_namespaced_pod(
        namespace, python_pod("failing", "import sys; print('giving up'); sys.exit(7)")
    )

    pod = wait_phase(sandbox, namespace, "failing", "Failed")

    state = terminated(pod)
    assert (state.exit_code, state.reason) == (7, "Error")
    assert sandbox.pod_log(namespace, "failing") == "giving up\n"
    assert not [c for c in pod.status.conditions if c.type == "Ready" and c.status == "True"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_environment_comes_from_secrets_config_maps_and_the_pod(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    secret_value = uuid.uuid4().hex  # never printed: the program prints its hash
    pods.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": secret_value}}
    )
    pods.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"MODE": "strict"}}
    )
    program = """
        import hashlib, os
        print("token", hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest())
        for name in ("CFG_MODE", "POD_NAME", "POD_NAMESPACE", "GREETING", "PYTHONUNBUFFERED"):
            print(name, os.environ[name])
        print("api", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
    """
    env = [
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "GREETING", "value": "hello $(POD_NAME)"},
    ]
    env_from = [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}]
    pods.create_namespaced_pod(namespace, python_pod("env", program, env=env, env_from=env_from))

    wait_phase(sandbox, namespace, "env", "Succeeded")

    lines = sandbox.pod_log(namespace, "env").splitlines()
    port = str(sandbox.control_plane.api_port)
    assert lines == [
        f"token {sha(secret_value)}",
        "CFG_MODE strict",
        "POD_NAME env",
        f"POD_NAMESPACE {namespace}",
        "GREETING hello env",
        "PYTHONUNBUFFERED 1",
        f"api 127.0.0.1 {port}",
    ]
    assert secret_value not in "\n".join(lines)


def test_a_missing_secret_keeps_the_container_waiting_until_it_exists(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    env = [{"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    pods.create_namespaced_pod(namespace, python_pod("waits", "print('started')", env=env))

    def waiting_reason() -> str | None:
        statuses = pods.read_namespaced_pod("waits", namespace).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None

    sandbox.wait_for(lambda: waiting_reason() == "CreateContainerConfigError", "CreateContainerConfigError")
    assert phase(pods, namespace, "waits") == "Pending"
    pods.create_namespaced_secret(namespace, {"metadata": {"name": "later"}, "stringData": {"token": "x"}})

    wait_phase(sandbox, namespace, "waits", "Succeeded")
    assert sandbox.pod_log(namespace, "waits") == "started\n"


SIGTERM_PROGRAM = """
    import signal, sys, threading
    stop = threading.Event()
    def on_term(number, frame):
        print("got SIGTERM", flush=True)
        stop.set()
    signal.signal(signal.SIGTERM, on_term)
    print("waiting", flush=True)
    stop.wait()
    sys.exit(0)
"""


def test_deleting_a_pod_sends_sigterm_to_its_process_then_removes_it(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    pods.create_namespaced_pod(namespace, python_pod("stops", SIGTERM_PROGRAM, grace=30))
    pod = wait_phase(sandbox, namespace, "stops", "Running")
    assert [c.status for c in pod.status.conditions if c.type == "Ready"] == ["True"]
    sandbox.wait_for(
        lambda: "waiting" in sandbox.pod_log(namespace, "stops"), "the program's handler installed"
    )

    # `kubectl logs -f`, as prefect-kubernetes' worker streams a run's output: it ends with the process.
    followed = pods.read_namespaced_pod_log("stops", namespace, follow=True, _preload_content=False)

    pods.delete_namespaced_pod("stops", namespace)

    sandbox.wait_for(lambda: gone(pods, namespace, "stops"), "the pod removed by the kubelet", RUN_TIMEOUT_S)
    assert sandbox.pod_log(namespace, "stops") == "waiting\ngot SIGTERM\n"
    assert followed.read() == b"waiting\ngot SIGTERM\n"


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    # No handler: as PID 1 of its PID namespace (a container's main process) it does not die of SIGTERM.
    program = "import time\nprint('waiting', flush=True)\nwhile True: time.sleep(60)"
    pods.create_namespaced_pod(namespace, python_pod("stubborn", program))
    wait_phase(sandbox, namespace, "stubborn", "Running")
    sandbox.wait_for(lambda: "waiting" in sandbox.pod_log(namespace, "stubborn"), "the program started")

    pods.delete_namespaced_pod("stubborn", namespace, grace_period_seconds=1)

    sandbox.wait_for(
        lambda: gone(pods, namespace, "stubborn"), "the pod removed after SIGKILL", RUN_TIMEOUT_S
    )


def test_restart_policy_always_restarts_an_exited_container(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox.settings, "restart_backoff", 0.1)
    pods.create_namespaced_pod(
        namespace, python_pod("again", "import sys; print('run'); sys.exit(2)", restart_policy="Always")
    )

    def restarts() -> int:
        statuses = pods.read_namespaced_pod("again", namespace).status.container_statuses or []
        return int(statuses[0].restart_count) if statuses else 0

    sandbox.wait_for(lambda: restarts() >= 2, "two restarts", RUN_TIMEOUT_S)
    [status] = pods.read_namespaced_pod("again", namespace).status.container_statuses
    assert status.last_state.terminated.exit_code == 2
    assert phase(pods, namespace, "again") == "Running"  # a restarting pod is never Failed
    assert sandbox.pod_log(namespace, "again", previous=True) == "run\n"


def test_a_pod_of_another_image_stays_pending_with_a_warning_event(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    pods.create_namespaced_pod(namespace, pod_body("foreign", ["sh", "-c", "true"], image="busybox:1.36"))

    def events() -> list[client.CoreV1Event]:
        return [
            e
            for e in pods.list_namespaced_event(namespace).items
            if e.involved_object.name == "foreign" and e.reason == "ImageNotEmulated"
        ]

    sandbox.wait_for(lambda: bool(events()), "an ImageNotEmulated event")
    [event] = events()
    assert event.type == "Warning"
    assert "busybox:1.36" in event.message and PROJECT_IMAGE in event.message
    pod = pods.read_namespaced_pod("foreign", namespace)
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ImageNotEmulated"


def test_a_job_of_the_project_image_completes_through_the_real_job_controller(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    template = {"metadata": {"labels": {"app": "once"}}, "spec": python_pod("-", "print('done')")["spec"]}
    job = {"metadata": {"name": "once"}, "spec": {"backoffLimit": 0, "template": template}}
    batch = client.BatchV1Api(sandbox.api)
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        conditions = batch.read_namespaced_job_status("once", namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    sandbox.wait_for(complete, "the Job Complete", RUN_TIMEOUT_S)
    [pod] = pods.list_namespaced_pod(namespace, label_selector="app=once").items
    assert sandbox.pod_log(namespace, pod.metadata.name) == "done\n"


def test_a_deployment_of_the_project_image_becomes_available_and_stops_with_sigterm(
    sandbox: Sandbox, namespace: str, pods: client.CoreV1Api
) -> None:
    spec = python_pod("-", SIGTERM_PROGRAM, restart_policy="Always")["spec"]
    template = {"metadata": {"labels": {"app": "server"}}, "spec": spec}
    deployment = {
        "metadata": {"name": "server"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "server"}}, "template": template},
    }
    apps = client.AppsV1Api(sandbox.api)
    apps.create_namespaced_deployment(namespace, deployment)

    sandbox.wait_for(
        lambda: apps.read_namespaced_deployment_status("server", namespace).status.available_replicas == 1,
        "the Deployment available",
        RUN_TIMEOUT_S,
    )
    [pod] = pods.list_namespaced_pod(namespace, label_selector="app=server").items
    name = pod.metadata.name
    sandbox.wait_for(lambda: "waiting" in sandbox.pod_log(namespace, name), "the program's handler installed")

    apps.delete_namespaced_deployment("server", namespace)  # the garbage collector deletes the pod

    sandbox.wait_for(lambda: gone(pods, namespace, name), "the Deployment's pod removed", RUN_TIMEOUT_S)
    assert sandbox.pod_log(namespace, name) == "waiting\ngot SIGTERM\n"
