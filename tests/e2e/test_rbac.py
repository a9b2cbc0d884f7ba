"""deployments/rbac.yaml on a real API server with RBAC: a whole rotation runs as the identity the file
grants, and that identity is refused everything the file does not grant.

The manifests are read from deployments/ (never copied here) and created with the admin client; the
flow then runs with KUBECONFIG pointing at a token kubeconfig of the file's ServiceAccount
(``rotation.kube`` caches one API client per KUBECONFIG value, so the flow really uses that identity).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from flows.rotate_auth import rotate_mssql_auth
from rotation import constants as c
from rotation.errors import PermanentError
from rotation.plan import lock_name
from sandbox.cluster import Database, Sandbox
from tests.support import create_basic_auth_secret, is_paused, logs_in

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
RBAC_YAML = DEPLOYMENTS / "rbac.yaml"
WORKER_YAML = DEPLOYMENTS / "worker.yaml"

# The example the manifests grant: database mssql-demo in namespace demo (no other test uses "demo").
NAMESPACE, DATABASE = "demo", "mssql-demo"
AUTH_SECRET, USER_SECRET = f"{DATABASE}-auth", f"{DATABASE}-new-auth"
UNLISTED_SECRET = "unrelated-secret"  # in demo, but not in the secrets Role's resourceNames
IDENTITY = "mssql-auth-rotation"  # the ServiceAccount and its namespace, as in rbac.yaml
ELSEWHERE = "demo-elsewhere"  # a namespace the manifests do not bind the identity in
GRANT_WAIT_S = 10.0  # the authorizer learns of new RBAC objects through its own watch

Manifest = dict[str, Any]


def load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in the manifests, found {len(found)}"
    return found[0]


def create(api: client.ApiClient, doc: Manifest, *, dry_run: bool = False) -> None:
    """Create one manifest as-is; an existing Namespace or ServiceAccount is fine, anything else is not."""
    core, rbac, apps = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
    ns = doc["metadata"].get("namespace")
    creators: dict[str, Callable[..., Any]] = {
        "Namespace": lambda **kw: core.create_namespace(doc, **kw),
        "ServiceAccount": lambda **kw: core.create_namespaced_service_account(ns, doc, **kw),
        "ConfigMap": lambda **kw: core.create_namespaced_config_map(ns, doc, **kw),
        "ClusterRole": lambda **kw: rbac.create_cluster_role(doc, **kw),
        "Role": lambda **kw: rbac.create_namespaced_role(ns, doc, **kw),
        "RoleBinding": lambda **kw: rbac.create_namespaced_role_binding(ns, doc, **kw),
        "Deployment": lambda **kw: apps.create_namespaced_deployment(ns, doc, **kw),
    }
    assert doc["kind"] in creators, f"this test does not know how to create a {doc['kind']}"
    try:
        creators[doc["kind"]](**({"dry_run": "All"} if dry_run else {}))
    except ApiException as exc:
        if not (exc.status == 409 and doc["kind"] in ("Namespace", "ServiceAccount")):
            raise


def basic_auth(name: str, namespace: str, password: str) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        type=c.SECRET_TYPE_BASIC_AUTH,
        string_data={"username": "sa", "password": password},
    )


# -- fixtures: the manifests applied once, the database created once -------------------------------
@pytest.fixture(scope="module")
def rbac_docs() -> list[Manifest]:
    return load(RBAC_YAML)


@pytest.fixture(scope="module")
def database(sandbox: Sandbox, rbac_docs: list[Manifest]) -> Database:
    db = sandbox.create_database(NAMESPACE, DATABASE, replicas=3)
    declared = {d["metadata"]["name"] for d in rbac_docs if d["kind"] == "Namespace"}
    for namespace in {d["metadata"].get("namespace") for d in rbac_docs} - declared - {None}:
        sandbox.ensure_namespace(namespace)  # the database namespaces exist before the grants
    for doc in rbac_docs:
        create(sandbox.api, doc)
    # Secrets the identity has no business with: same namespace but unlisted, and a same-named auth
    # secret in a namespace where it has no RoleBinding.
    sandbox.core.create_namespaced_secret(NAMESPACE, basic_auth(UNLISTED_SECRET, NAMESPACE, "Unl1sted-pw"))
    sandbox.ensure_namespace(ELSEWHERE)
    sandbox.core.create_namespaced_secret(ELSEWHERE, basic_auth(AUTH_SECRET, ELSEWHERE, "Elsewh3re-pw"))
    return db


@pytest.fixture(scope="module")
def kubeconfig(sandbox: Sandbox, database: Database, rbac_docs: list[Manifest]) -> Path:
    """A token kubeconfig for the manifests' ServiceAccount, once its grants are in force."""
    account = one(rbac_docs, "ServiceAccount")["metadata"]
    path = sandbox.service_account_kubeconfig(account["namespace"], account["name"])
    api = config.new_client_from_config(str(path))
    try:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        deadline = time.monotonic() + GRANT_WAIT_S
        while True:  # both bindings (ClusterRole and secrets Role) must have reached the authorizer
            try:
                core.read_namespaced_secret(AUTH_SECRET, NAMESPACE)
                custom.get_namespaced_custom_object(
                    c.DB_GROUP, c.DB_VERSION, NAMESPACE, c.DB_PLURAL, DATABASE
                )
                break
            except ApiException as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        api.close()
    return path


@dataclass(frozen=True)
class Identity:
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    rbac: client.RbacAuthorizationV1Api


@pytest.fixture(scope="module")
def identity(kubeconfig: Path) -> Iterator[Identity]:
    api = config.new_client_from_config(str(kubeconfig))
    try:
        yield Identity(
            client.CoreV1Api(api), client.CustomObjectsApi(api), client.RbacAuthorizationV1Api(api)
        )
    finally:
        api.close()


@pytest.fixture
def as_identity(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's Kubernetes calls go out as the manifests' ServiceAccount for this test."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))


# -- the manifests themselves ----------------------------------------------------------------------
def test_no_rule_grants_a_wildcard_and_secrets_are_granted_only_by_name() -> None:
    for path in sorted(DEPLOYMENTS.glob("*.yaml")):
        docs = load(path)
        assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"], f"{path.name}: cluster-wide grant"
        for role in (d for d in docs if d["kind"] in ("ClusterRole", "Role")):
            where = f"{path.name}: {role['kind']} {role['metadata']['name']}"
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), f"{where}: {field} {rule}"
                assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "patch", "delete"}
                if any(r.split("/")[0] == "secrets" for r in rule["resources"]):
                    assert (path.name, role["kind"], role["metadata"]["name"]) == (
                        "rbac.yaml",
                        "Role",
                        "mssql-auth-rotation-secrets",
                    ), f"{where} grants secrets"
                    assert rule.get("resourceNames"), f"{where}: secrets without resourceNames"
                    assert set(rule["verbs"]) <= {"get", "update"}, where


def test_the_secrets_role_lists_the_auth_secret_and_the_user_secret(rbac_docs: list[Manifest]) -> None:
    account = one(rbac_docs, "ServiceAccount")["metadata"]
    assert (account["namespace"], account["name"]) == (IDENTITY, IDENTITY)
    role = one(rbac_docs, "Role", "mssql-auth-rotation-secrets")
    assert role["metadata"]["namespace"] == NAMESPACE
    for rule in role["rules"]:
        assert set(rule["resourceNames"]) == {AUTH_SECRET, USER_SECRET}
    bindings = [d for d in rbac_docs if d["kind"] == "RoleBinding"]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == {
        ("ClusterRole", "mssql-auth-rotation"),
        ("Role", "mssql-auth-rotation-secrets"),
    }
    assert {b["metadata"]["namespace"] for b in bindings} == {NAMESPACE}


def test_the_worker_manifests_are_accepted_by_the_api_server(sandbox: Sandbox, database: Database) -> None:
    """Server-side dry run (schema and defaults validated, nothing stored) of deployments/worker.yaml."""
    docs = load(WORKER_YAML)
    for doc in docs:
        create(sandbox.api, doc, dry_run=True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"] and container["resources"]["requests"]


# -- a rotation as the identity --------------------------------------------------------------------
@pytest.mark.usefixtures("as_identity")
def test_a_rotation_succeeds_with_only_the_permissions_in_rbac_yaml(database: Database) -> None:
    old = database.secret_data()["password"]

    report = rotate_mssql_auth(namespace=NAMESPACE, database=DATABASE)

    assert report.outcome == "Successful"
    new = database.secret_data()["password"]  # read with the admin client
    assert new != old
    for pod in database.pods:
        assert logs_in(database, pod, new), pod
        assert not logs_in(database, pod, old), pod
    assert not is_paused(database)
    assert database.get()["status"]["phase"] == "Ready"
    assert lock_name(DATABASE) not in database.sandbox.coordination_leases(NAMESPACE)


@pytest.mark.usefixtures("as_identity")
def test_a_user_secret_the_role_does_not_list_is_refused_before_anything_changes(
    database: Database,
) -> None:
    before = database.secret_data()

    with pytest.raises(PermanentError, match=r"403 Forbidden.*deployments/rbac\.yaml"):
        rotate_mssql_auth(namespace=NAMESPACE, database=DATABASE, auth_secret=UNLISTED_SECRET)

    assert database.secret_data() == before
    assert not is_paused(database)
    assert lock_name(DATABASE) not in database.sandbox.coordination_leases(NAMESPACE)


@pytest.mark.usefixtures("as_identity")
def test_the_listed_user_secret_becomes_the_auth_secret(database: Database) -> None:
    old = database.secret_data()["password"]
    chosen = "Rbac-Listed.Us3r-Secret"
    create_basic_auth_secret(database, USER_SECRET, "sa", chosen)

    report = rotate_mssql_auth(namespace=NAMESPACE, database=DATABASE, auth_secret=USER_SECRET)

    assert report.outcome == "Successful" and report.auth_secret == USER_SECRET
    assert database.get()["spec"]["authSecret"]["name"] == USER_SECRET
    assert database.secret_data(USER_SECRET)["password.prev"] == old
    for pod in database.pods:
        assert logs_in(database, pod, chosen), pod
        assert not logs_in(database, pod, old), pod
    assert not is_paused(database)


# -- everything else is refused --------------------------------------------------------------------
def _secret_body(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "stringData": {"password": "x"}}


FORBIDDEN: dict[str, Callable[[Identity], object]] = {
    "read a secret the Role does not list": lambda i: i.core.read_namespaced_secret(
        UNLISTED_SECRET, NAMESPACE
    ),
    "list the secrets of the database namespace": lambda i: i.core.list_namespaced_secret(NAMESPACE),
    "read a same-named auth secret in another namespace": lambda i: i.core.read_namespaced_secret(
        AUTH_SECRET, ELSEWHERE
    ),
    "list the secrets of its own namespace": lambda i: i.core.list_namespaced_secret(IDENTITY),
    "update a secret the Role does not list": lambda i: i.core.replace_namespaced_secret(
        UNLISTED_SECRET, NAMESPACE, _secret_body(UNLISTED_SECRET)
    ),
    "create a secret": lambda i: i.core.create_namespaced_secret(NAMESPACE, _secret_body("planted")),
    "create a ConfigMap": lambda i: i.core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "planted"}}
    ),
    "patch a Service": lambda i: i.core.patch_namespaced_service(
        DATABASE, NAMESPACE, {"metadata": {"labels": {"planted": "true"}}}
    ),
    "create a pod (which could mount any secret)": lambda i: i.core.create_namespaced_pod(
        NAMESPACE, {"metadata": {"name": "planted"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    ),
    "delete the MSSQLServer": lambda i: i.custom.delete_namespaced_custom_object(
        c.DB_GROUP, c.DB_VERSION, NAMESPACE, c.DB_PLURAL, DATABASE
    ),
    "read an MSSQLServer in a namespace without a RoleBinding": lambda i: (
        i.custom.get_namespaced_custom_object(c.DB_GROUP, c.DB_VERSION, ELSEWHERE, c.DB_PLURAL, DATABASE)
    ),
    "list MSSQLServers cluster-wide": lambda i: i.custom.list_cluster_custom_object(
        c.DB_GROUP, c.DB_VERSION, c.DB_PLURAL
    ),
    "grant itself more with a RoleBinding": lambda i: i.rbac.create_namespaced_role_binding(
        NAMESPACE,
        {
            "metadata": {"name": "planted"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": IDENTITY, "namespace": IDENTITY}],
        },
    ),
}


@pytest.mark.parametrize("attempt", list(FORBIDDEN))
def test_the_identity_is_refused_what_rbac_yaml_does_not_grant(identity: Identity, attempt: str) -> None:
    with pytest.raises(ApiException) as refused:
        FORBIDDEN[attempt](identity)
    assert refused.value.status == 403, refused.value.reason
    assert f"system:serviceaccount:{IDENTITY}:{IDENTITY}" in str(refused.value.body)
