"""Reading raw pod objects (the API server's JSON, as the watches deliver it) and listing them.

Pure helpers shared by the emulated controllers, plus one list call that returns the same raw
shape, so a controller judges a listed pod and a watched pod with the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client

ROLE_LABEL = "kubedb.com/role"
INSTANCE_LABEL = "app.kubernetes.io/instance"
NAME_LABEL = "app.kubernetes.io/name"
KUBEDB_NAME = "mssqlservers.kubedb.com"

Pod = dict[str, Any]


@dataclass(frozen=True)
class PodKey:
    namespace: str
    name: str

    @classmethod
    def of(cls, pod: Pod) -> PodKey:
        return cls(pod["metadata"]["namespace"], pod["metadata"]["name"])


def list_pods(core: client.CoreV1Api, namespace: str, label_selector: str = "") -> list[Pod]:
    response = core.list_namespaced_pod(namespace, label_selector=label_selector, _preload_content=False)
    return list(json.loads(response.data)["items"])


def name(pod: Pod) -> str:
    return str(pod["metadata"]["name"])


def labels(pod: Pod) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def role(pod: Pod) -> str:
    """The ``kubedb.com/role`` label, or "" when the pod has none."""
    return labels(pod).get(ROLE_LABEL, "")


def is_kubedb_pod(pod: Pod) -> bool:
    return labels(pod).get(NAME_LABEL) == KUBEDB_NAME


def is_terminating(pod: Pod) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def is_ready(pod: Pod) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def is_running(pod: Pod) -> bool:
    """Its containers started (the emulated kubelet writes phase Running only then)."""
    return (pod.get("status") or {}).get("phase") == "Running"


def controller_of(pod: Pod) -> dict[str, Any] | None:
    """The ownerReference marked controller (a PetSet for every pod the sandbox creates)."""
    owners = pod["metadata"].get("ownerReferences") or []
    return next((o for o in owners if o.get("controller")), None)


def owner_petset(pod: Pod) -> str | None:
    owner = controller_of(pod)
    return str(owner["name"]) if owner is not None and owner.get("kind") == "PetSet" else None


def container_names(pod: Pod) -> set[str]:
    return {c["name"] for c in pod["spec"].get("containers") or []}


def ordinal(pod: Pod) -> int:
    return int(name(pod).rsplit("-", 1)[1])


def database_replicas(pods: list[Pod], database: str) -> list[Pod]:
    """The pods of the database's own PetSet (``<db>-N``), not its arbiter's; by ordinal."""
    return sorted((p for p in pods if owner_petset(p) == database), key=ordinal)
