"""The production path on the sandbox: the shipped manifests of deployments/ applied with kubectl.

What a team does on its own cluster, as `tests/e2e/test_in_cluster.py` and `make stack`'s
``--in-cluster`` option do it: the flow runs' identity (rbac.yaml), the Prefect API's CA and auth
string, a Role per database (``python -m rotation rbac``), the kubernetes worker (worker.yaml) and the
bridge (bridge.yaml) as pods. Only what every team sets for itself differs from the shipped files: the
image name, the Prefect API's URL in the ConfigMaps, and the worker's health port (pods here share the
machine's network).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sandbox.cluster import Sandbox

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEPLOYMENTS = PROJECT_DIR / "deployments"
NAMESPACE = "mssql-auth-rotation"  # rbac.yaml's, worker.yaml's and bridge.yaml's namespace
FLOW_IDENTITY = f"system:serviceaccount:{NAMESPACE}:mssql-auth-rotation"
WORKER_LABEL = "app.kubernetes.io/component=worker"
BRIDGE_LABEL = "app.kubernetes.io/component=bridge"

Manifest = dict[str, Any]


def kubectl(sandbox: Sandbox, *args: str, stdin: str | None = None) -> str:
    """``kubectl --kubeconfig <the sandbox's admin> ...``; its stderr in the error if it fails."""
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(sandbox.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def manifests(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def apply(sandbox: Sandbox, docs: list[Manifest]) -> None:
    kubectl(sandbox, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def prepare_identity(sandbox: Sandbox) -> None:
    """rbac.yaml, plus the ConfigMap ``prefect-api-ca`` and Secret ``prefect-api-auth`` that the job
    template, worker.yaml and bridge.yaml mount (here any CA and any auth string: the sandbox's
    Prefect API is plain http without auth)."""
    kubectl(sandbox, "apply", "-f", str(DEPLOYMENTS / "rbac.yaml"))
    apply(
        sandbox,
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "prefect-api-ca", "namespace": NAMESPACE},
                "data": {"ca.crt": sandbox.control_plane.ca_cert.read_text()},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "prefect-api-auth", "namespace": NAMESPACE},
                "stringData": {"auth-string": "unused:the-sandbox-api-has-no-auth"},
            },
        ],
    )


def grant_database(sandbox: Sandbox, namespace: str, database: str, replicas: int, *extra: str) -> None:
    """``python -m rotation rbac ... | kubectl apply -f -``: the Role naming one database's objects."""
    role = subprocess.run(
        [
            sys.executable,
            "-m",
            "rotation",
            "rbac",
            "--namespace",
            namespace,
            "--database",
            database,
            "--replicas",
            str(replicas),
            *extra,
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kubectl(sandbox, "apply", "-f", "-", stdin=role)


def worker_manifests(sandbox: Sandbox, api_url: str, health_port: int) -> list[Manifest]:
    """worker.yaml with the sandbox's image, this Prefect API and a health port of its own."""
    docs = manifests(DEPLOYMENTS / "worker.yaml")
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "prefect-worker":
            doc["data"]["PREFECT_API_URL"] = api_url
            doc["data"]["PREFECT_WORKER_WEBSERVER_PORT"] = str(health_port)
        _set_image(doc, sandbox.settings.project_image)
    return docs


def bridge_manifests(sandbox: Sandbox, api_url: str, ui_url: str) -> list[Manifest]:
    """bridge.yaml with the sandbox's image and this Prefect API and UI."""
    docs = manifests(DEPLOYMENTS / "bridge.yaml")
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            doc["data"]["PREFECT_API_URL"] = api_url
            doc["data"]["PREFECT_UI_URL"] = ui_url
        _set_image(doc, sandbox.settings.project_image)
    return docs


def _set_image(doc: Manifest, image: str) -> None:
    if doc["kind"] == "Deployment":
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["image"] = image


def running_pods(sandbox: Sandbox, label_selector: str) -> list[str]:
    pods = sandbox.core.list_namespaced_pod(NAMESPACE, label_selector=label_selector).items
    return [
        p.metadata.name for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    ]
