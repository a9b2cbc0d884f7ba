"""The objects KubeDB creates for an MSSQLServer, as plain dicts (pure; no API calls).

Kept independent of the production code's constants on purpose: the sandbox states what KubeDB
does, so a wrong name in the product shows up as a failing test instead of agreeing with itself.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
PETSET_GROUP, PETSET_VERSION, PETSET_PLURAL = "apps.k8s.appscode.com", "v1", "petsets"
SQL_PORT = 1433
MSSQL_VERSION = "2022-cu12"


def selector_labels(db: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mssqlservers.kubedb.com",
        "app.kubernetes.io/instance": db,
        "app.kubernetes.io/managed-by": "kubedb.com",
    }


def pod_labels(db: str, role: str | None) -> dict[str, str]:
    labels = {**selector_labels(db), "app.kubernetes.io/component": "database"}
    if role:
        labels["kubedb.com/role"] = role
    return labels


def kubedb_password() -> str:
    """KubeDB's generator: 16 chars of [A-Za-z0-9] with at least one upper, lower and digit."""
    alphabet = string.ascii_letters + string.digits
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(16))
        if (
            any(c.isupper() for c in candidate)
            and any(c.islower() for c in candidate)
            and any(c.isdigit() for c in candidate)
        ):
            return candidate


def auth_secret(db: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{db}-auth", "labels": selector_labels(db)},
        "type": "kubernetes.io/basic-auth",
        "stringData": {"username": "sa", "password": password},
    }


def mssqlserver(db: str, replicas: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "version": MSSQL_VERSION,
        "replicas": replicas,
        "authSecret": {"name": f"{db}-auth"},
        "storageType": "Durable",
        "deletionPolicy": "WipeOut",
        "storage": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    if replicas > 1:
        spec["topology"] = {
            "mode": "AvailabilityGroup",
            "availabilityGroup": {"databases": ["agdb1"]},
        }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MSSQLServer", "metadata": {"name": db}, "spec": spec}


def _sa_password_env(secret_name: str) -> dict[str, Any]:
    return {
        "name": "MSSQL_SA_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "password"}},
    }


def petset(db: str, replicas: int, owner_uid: str) -> dict[str, Any]:
    env = [
        {"name": "ACCEPT_EULA", "value": "Y"},
        {"name": "MSSQL_SA_USERNAME", "value": "sa"},
        _sa_password_env(f"{db}-auth"),
    ]
    template = {
        "metadata": {"labels": pod_labels(db, None)},
        "spec": {
            "initContainers": [{"name": "mssql-init", "image": "kubedb/mssql-init:2022-ubuntu-22-v1"}],
            "containers": [
                {
                    "name": "mssql",
                    "image": f"mcr.microsoft.com/mssql/server:{MSSQL_VERSION}",
                    "env": env,
                    "ports": [{"name": "db", "containerPort": SQL_PORT}],
                },
                {
                    "name": "mssql-coordinator",
                    "image": "kubedb/mssql-coordinator:v0.3.0",
                    "env": [_sa_password_env(f"{db}-auth")],
                },
            ],
        },
    }
    return {
        "apiVersion": f"{PETSET_GROUP}/{PETSET_VERSION}",
        "kind": "PetSet",
        "metadata": {
            "name": db,
            "labels": selector_labels(db),
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "MSSQLServer",
                    "name": db,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "serviceName": f"{db}-pods",
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector_labels(db)},
            "template": template,
        },
    }


def services(db: str, replicas: int) -> list[dict[str, Any]]:
    port = [{"name": "db", "port": SQL_PORT, "targetPort": "db"}]
    primary = {**pod_labels(db, "primary")} if replicas > 1 else selector_labels(db)
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": db, "labels": selector_labels(db)},
            "spec": {"selector": primary, "ports": port},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{db}-secondary", "labels": selector_labels(db)},
            "spec": {"selector": pod_labels(db, "secondary"), "ports": port},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{db}-pods", "labels": selector_labels(db)},
            "spec": {
                "clusterIP": "None",
                "selector": selector_labels(db),
                "ports": port,
                "publishNotReadyAddresses": True,
            },
        },
    ]


def pod_from_template(petset_obj: dict[str, Any], ordinal: int, node: str) -> dict[str, Any]:
    """What the PetSet controller creates for one ordinal: the template plus identity and role."""
    db = petset_obj["metadata"]["name"]
    template = petset_obj["spec"]["template"]
    replicas = int(petset_obj["spec"]["replicas"])
    role = None if replicas == 1 else ("primary" if ordinal == 0 else "secondary")
    labels = {**template["metadata"].get("labels", {}), **pod_labels(db, role)}
    labels["statefulset.kubernetes.io/pod-name"] = f"{db}-{ordinal}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{db}-{ordinal}",
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{PETSET_GROUP}/{PETSET_VERSION}",
                    "kind": "PetSet",
                    "name": db,
                    "uid": petset_obj["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            **template["spec"],
            "nodeName": node,
            "hostname": f"{db}-{ordinal}",
            "subdomain": petset_obj["spec"]["serviceName"],
            "terminationGracePeriodSeconds": 30,
        },
    }
