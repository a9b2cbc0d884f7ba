"""The objects KubeDB creates for an MSSQLServer, as plain dicts (pure; no API calls).

Kept independent of the production code's constants on purpose: the sandbox states what KubeDB
does, so a wrong name in the product shows up as a failing test instead of agreeing with itself.
"""

from __future__ import annotations

import base64
import copy
import secrets
import string
from typing import Any

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
PETSET_GROUP, PETSET_VERSION, PETSET_PLURAL = "apps.k8s.appscode.com", "v1", "petsets"
SQL_PORT = 1433
MSSQL_VERSION = "2022-cu12"
FINALIZER = "kubedb.com"  # am apis/kubedb/constants.go GenericKey: KubeDB's finalizer on a database
AUTH_ACTIVE_FROM = "kubedb.com/auth-active-from"  # am apis/kubedb/constants.go AuthActiveFromAnnotation
BASIC_AUTH, OPAQUE = "kubernetes.io/basic-auth", "Opaque"
ARBITER_SUFFIX = "-arbiter"  # docs guides/mssqlserver/clustering/arbiter.md; MongoDB's NodeTypeArbiter
STATS_PORT = 9399  # am apis/kubedb/constants.go MSSQLMonitoringDefaultServicePort
OPS_GROUP, OPS_VERSION, OPS_PLURAL = "ops.kubedb.com", "v1alpha1", "mssqlserveropsrequests"
ISSUER_GROUP, ISSUER_KIND = "cert-manager.io", "Issuer"
TLS_SECRET = "kubernetes.io/tls"
KUBEDB_ORGANIZATION = "kubedb"  # am apis/kubedb/constants.go KubeDBOrganization
SERVER_CERT, CLIENT_CERT = "server", "client"  # am MSSQLServerServerCert, MSSQLServerClientCert
CLIENT_COMMON_NAME = "mssql"  # docs tls/standalone.md: the client-cert secret's common name


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


def is_availability_group(replicas: int) -> bool:
    return replicas > 1


def has_arbiter(replicas: int) -> bool:
    """KubeDB defaults ``spec.arbiter`` for an AG with an even replica count (am SetArbiterDefault)."""
    return is_availability_group(replicas) and replicas % 2 == 0


def arbiter_name(db: str) -> str:
    return f"{db}{ARBITER_SUFFIX}"


def owner_reference(db_obj: dict[str, Any]) -> dict[str, Any]:
    """The controller reference KubeDB's AsOwner() gives what it creates for a database."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MSSQLServer",
        "name": db_obj["metadata"]["name"],
        "uid": db_obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def auth_secret(db_obj: dict[str, Any], password: str, active_from: str) -> dict[str, Any]:
    """The secret KubeDB generates (am pkg/controller/secret/auth_secret.go createAuthSecret and
    manageActiveFrom): basic-auth, the database's labels, owned by it, stamped with its activation."""
    db = db_obj["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{db}-auth",
            "labels": pod_labels(db, None),
            "annotations": {AUTH_ACTIVE_FROM: active_from},
            "ownerReferences": [owner_reference(db_obj)],
        },
        "type": BASIC_AUTH,
        "stringData": {"username": "sa", "password": password},
    }


def user_auth_secret(db: str, password: str, secret_type: str, active_from: str) -> dict[str, Any]:
    """A secret the user brought, as it looks once KubeDB has adopted it (syncOwnedLabels and
    manageActiveFrom): the database's labels and the activation annotation, but no owner."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{db}-auth",
            "labels": pod_labels(db, None),
            "annotations": {AUTH_ACTIVE_FROM: active_from},
        },
        "type": secret_type,
        "stringData": {"username": "sa", "password": password},
    }


def issuer_name(db: str) -> str:
    """The sandbox's cert-manager Issuer of a database: one CA per database, ``<db>-ca``."""
    return f"{db}-ca"


def cert_secret_name(db: str, alias: str) -> str:
    """``<db>-<alias>-cert`` (am MSSQLServer.CertificateName)."""
    return f"{db}-{alias}-cert"


def tls_spec(db: str, client_tls: bool) -> dict[str, Any]:
    """``spec.tls`` as KubeDB leaves it after its defaulting (am MSSQLServer.SetTLSDefaults): the
    issuer, clientTLS, and the server and client certificates with their secret names and subjects.
    (An Availability Group's ``endpoint`` certificate, for mirroring endpoints, is not emulated.)"""
    return {
        "issuerRef": {"apiGroup": ISSUER_GROUP, "kind": ISSUER_KIND, "name": issuer_name(db)},
        "clientTLS": client_tls,
        "certificates": [
            {
                "alias": alias,
                "secretName": cert_secret_name(db, alias),
                "subject": {"organizations": [KUBEDB_ORGANIZATION], "organizationalUnits": [alias]},
            }
            for alias in (SERVER_CERT, CLIENT_CERT)
        ],
    }


def pod_dns_names(pod: str, db: str, namespace: str) -> list[str]:
    """A pod's names through the governing service: ``<pod>.<db>-pods.<ns>.svc`` and its
    ``.cluster.local`` form."""
    name = f"{pod}.{db}-pods.{namespace}.svc"
    return [name, f"{name}.cluster.local"]


def server_cert_dns_names(db: str, namespace: str, replicas: int) -> list[str]:
    """The DNS names of ``<db>-server-cert``: every replica pod's names, then ``<db>`` and
    ``<db>.<ns>.svc`` (the primary service)."""
    names = [name for i in range(replicas) for name in pod_dns_names(f"{db}-{i}", db, namespace)]
    return [*names, db, f"{db}.{namespace}.svc"]


def certificate_secret(
    db: str,
    alias: str,
    *,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    common_name: str,
    dns_names: list[str],
) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` secret as cert-manager writes it for KubeDB's Certificate (labels and
    annotations as docs tls/standalone.md shows them)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": cert_secret_name(db, alias),
            "labels": {**pod_labels(db, None), "controller.cert-manager.io/fao": "true"},
            "annotations": {
                "cert-manager.io/alt-names": ",".join(dns_names),
                "cert-manager.io/certificate-name": cert_secret_name(db, alias),
                "cert-manager.io/common-name": common_name,
                "cert-manager.io/ip-sans": "",
                "cert-manager.io/issuer-group": ISSUER_GROUP,
                "cert-manager.io/issuer-kind": ISSUER_KIND,
                "cert-manager.io/issuer-name": issuer_name(db),
                "cert-manager.io/subject-organizationalunits": alias,
                "cert-manager.io/subject-organizations": KUBEDB_ORGANIZATION,
                "cert-manager.io/uri-sans": "",
            },
        },
        "type": TLS_SECRET,
        "data": {"ca.crt": b64(ca_pem), "tls.crt": b64(cert_pem), "tls.key": b64(key_pem)},
    }


def mssqlserver(db: str, replicas: int, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    """The MSSQLServer object; ``tls`` is its ``spec.tls`` (see tls_spec), None for none."""
    spec: dict[str, Any] = {
        "version": MSSQL_VERSION,
        "replicas": replicas,
        "authSecret": {"name": f"{db}-auth"},
        "storageType": "Durable",
        "deletionPolicy": "WipeOut",
        "storage": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    if is_availability_group(replicas):
        spec["topology"] = {
            "mode": "AvailabilityGroup",
            "availabilityGroup": {"databases": ["agdb1"]},
        }
    if has_arbiter(replicas):
        spec["arbiter"] = {"resources": {"requests": {"cpu": "200m", "memory": "256Mi"}}}
    if tls is not None:
        spec["tls"] = tls
    # With KubeDB's finalizer, as its operator leaves a database it has taken up.
    metadata = {"name": db, "finalizers": [FINALIZER]}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MSSQLServer", "metadata": metadata, "spec": spec}


def _sa_password_env(secret_name: str) -> dict[str, Any]:
    return {
        "name": "MSSQL_SA_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "password"}},
    }


def _petset(name: str, db_obj: dict[str, Any], replicas: int, template: dict[str, Any]) -> dict[str, Any]:
    db = db_obj["metadata"]["name"]
    return {
        "apiVersion": f"{PETSET_GROUP}/{PETSET_VERSION}",
        "kind": "PetSet",
        "metadata": {
            "name": name,
            "labels": selector_labels(db),
            "ownerReferences": [owner_reference(db_obj)],
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


def petset(db_obj: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The database's PetSet: ``mssql`` everywhere, plus ``mssql-coordinator`` in an AG."""
    db = db_obj["metadata"]["name"]
    ag = is_availability_group(replicas)
    env = [
        {"name": "ACCEPT_EULA", "value": "Y"},
        {"name": "MSSQL_SA_USERNAME", "value": "sa"},
        _sa_password_env(f"{db}-auth"),
    ]
    if ag:
        env.append({"name": "MSSQL_ENABLE_HADR", "value": "1"})
    containers: list[dict[str, Any]] = [
        {
            "name": "mssql",
            "image": f"mcr.microsoft.com/mssql/server:{MSSQL_VERSION}",
            "env": env,
            "ports": [{"name": "db", "containerPort": SQL_PORT}],
        }
    ]
    if ag:
        containers.append(_coordinator(env=[_sa_password_env(f"{db}-auth")]))
    template = {
        "metadata": {"labels": pod_labels(db, None)},
        "spec": {
            "initContainers": [{"name": "mssql-init", "image": "kubedb/mssql-init:2022-ubuntu-22-v1"}],
            "containers": containers,
        },
    }
    return _petset(db, db_obj, replicas, template)


def arbiter_petset(db_obj: dict[str, Any]) -> dict[str, Any]:
    """``<db>-arbiter``: one pod that votes and holds no databases. Its labels are unverified; this
    assumes the least kind case: exactly the database's own labels, no role and no type label
    (MongoDB's arbiter adds ``mongodb.kubedb.com/node.type=arbiter``, am apis/kubedb/v1/mongodb_helpers.go
    ArbiterLabels), so only its name and its owner PetSet tell it apart from a replica."""
    db = db_obj["metadata"]["name"]
    template = {"metadata": {"labels": pod_labels(db, None)}, "spec": {"containers": [_coordinator(env=[])]}}
    return _petset(arbiter_name(db), db_obj, 1, template)


def _coordinator(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "mssql-coordinator", "image": "kubedb/mssql-coordinator:v0.3.0", "env": env}


def services(db_obj: dict[str, Any], replicas: int) -> list[dict[str, Any]]:
    """``<db>`` (the primary), ``<db>-pods`` (governing, headless), ``<db>-stats``, and in an AG
    ``<db>-secondary``; each owned by the database (KubeDB's ensureService), so the garbage
    collector removes them with it. Their Endpoints are the endpoints controller's."""
    db = db_obj["metadata"]["name"]
    port = [{"name": "db", "port": SQL_PORT, "targetPort": "db"}]
    ag = is_availability_group(replicas)

    def service(name: str, selector: dict[str, str], **spec: Any) -> dict[str, Any]:
        meta = {"name": name, "labels": pod_labels(db, None), "ownerReferences": [owner_reference(db_obj)]}
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": selector, **spec},
        }

    made = [
        service(db, pod_labels(db, "primary") if ag else selector_labels(db), ports=port),
        service(
            f"{db}-pods", selector_labels(db), clusterIP="None", ports=port, publishNotReadyAddresses=True
        ),
        service(
            f"{db}-stats",
            selector_labels(db),
            ports=[{"name": "metrics", "port": STATS_PORT, "targetPort": "metrics"}],
        ),
    ]
    made[2]["metadata"]["labels"]["kubedb.com/role"] = "stats"  # am StatsServiceLabels
    if ag:
        made.append(service(f"{db}-secondary", pod_labels(db, "secondary"), ports=port))
    return made


def pod_from_template(petset_obj: dict[str, Any], ordinal: int, sql_port: int) -> dict[str, Any]:
    """What the PetSet controller creates for one ordinal: the template plus the pod's identity.

    No ``nodeName``: the scheduler binds the pod. No role label: the coordinator gives roles.
    ``sql_port`` is declared as the ``mssql`` container's ``db`` port (1433 unless the sandbox runs
    on IPv6, where each pod has its own).
    """
    name = f"{petset_obj['metadata']['name']}-{ordinal}"
    template = copy.deepcopy(petset_obj["spec"]["template"])
    labels = {
        **template["metadata"].get("labels", {}),
        "apps.kubernetes.io/pod-index": str(ordinal),
        "statefulset.kubernetes.io/pod-name": name,
    }
    for container in template["spec"]["containers"]:
        for port in container.get("ports") or []:
            if container["name"] == "mssql" and port.get("name") == "db":
                port["containerPort"] = sql_port
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{PETSET_GROUP}/{PETSET_VERSION}",
                    "kind": "PetSet",
                    "name": petset_obj["metadata"]["name"],
                    "uid": petset_obj["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            **template["spec"],
            "hostname": name,
            "subdomain": petset_obj["spec"]["serviceName"],
            "terminationGracePeriodSeconds": 30,
        },
    }


def declared_sql_port(pod: dict[str, Any]) -> int | None:
    """The ``mssql`` container's ``db`` containerPort; None for a pod without SQL Server."""
    for container in pod["spec"].get("containers") or []:
        if container["name"] == "mssql":
            for port in container.get("ports") or []:
                if port.get("name") == "db":
                    return int(port["containerPort"])
    return None


def pod_disruption_budget(db_obj: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A policy/v1beta1 PDB named after the database over its pods (the arbiter's too), owned by
    the database so that the garbage collector removes it with it."""
    db = db_obj["metadata"]["name"]
    return {
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": db,
            "labels": pod_labels(db, None),
            "ownerReferences": [owner_reference(db_obj)],
        },
        "spec": {**spec, "selector": {"matchLabels": selector_labels(db)}},
    }


def ops_request(db: str, name: str, type_: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{OPS_GROUP}/{OPS_VERSION}",
        "kind": "MSSQLServerOpsRequest",
        "metadata": {"name": name},
        "spec": {"type": type_, "databaseRef": {"name": db}},
    }
