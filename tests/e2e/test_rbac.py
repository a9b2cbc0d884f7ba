"""The rotation's identity on a real API server with RBAC: deployments/rbac.yaml (the ServiceAccount) and
deployments/rbac-mssql-demo.yaml (the Role and RoleBinding `python -m rotation rbac` generates for the
example database, and nothing else). Whole rotations run as that identity, and it is refused
everything the generated Role does not name: another database's pods, PetSet, MSSQLServer, secrets
and Lease in the same namespace, pods beyond the replicas, writes to the TLS secret.

The manifests are read from deployments/ (never copied here) and created with the admin client; the
flow then runs with KUBECONFIG pointing at a token kubeconfig of the file's ServiceAccount
(``rotation.kube`` caches one API client per KUBECONFIG value, so the flow really uses that identity).

The in-cluster fleet's identity (deployments/rbac-fleet.yaml, ServiceAccount mssql-auth-rotation-fleet,
and a database's grant generated with ``--fleet``): it discovers every namespace's databases, a whole
fleet run under its token rotates the one granted to it, and every other is refused (403) and
reported, unchanged.

The Prefect kubernetes work pools' base job templates (deployments/k8s-base-job-template.json, and
k8s-fleet-job-template.json for the fleet), with a real Prefect server: the image, command, namespace
and service account of the flow runs' Jobs are no job variables. The server refuses a deployment or a
run that sets them (422) where it checks job variables; where it does not (PATCH of a deployment,
POST /flow_runs/), the worker's own rendering (prefect-kubernetes' job configuration, as the worker
calls it) leaves them as the template fixes them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_kubernetes.worker import KubernetesWorker

from flows.rotate_auth import rotate_mssql_auth
from flows.rotate_fleet import rotate_mssql_fleet
from rotation import constants as c
from rotation import rbac
from rotation.errors import InvalidRequest, PermanentError
from rotation.fleet import Decision
from rotation.plan import lock_name
from sandbox.cluster import Database, Sandbox
from sandbox.prefect_stack import (
    K8S_BASE_JOB_TEMPLATE,
    K8S_FLEET_JOB_TEMPLATE,
    K8S_FLEET_POOL,
    K8S_POOL,
    PrefectStack,
)
from tests.fault_matrix import proves
from tests.support import assert_rotated, create_basic_auth_secret, is_paused, logs_in, terminated_pods

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
RBAC_YAML = DEPLOYMENTS / "rbac.yaml"
GRANT_YAML = DEPLOYMENTS / "rbac-mssql-demo.yaml"  # generated: tests/unit/test_rbac_cli.py
WORKER_YAML = DEPLOYMENTS / "worker.yaml"
FLEET_YAML = DEPLOYMENTS / "rbac-fleet.yaml"  # generated: tests/unit/test_rbac_fleet.py
FLEET_WORKER_YAML = DEPLOYMENTS / "worker-fleet.yaml"

# The example the manifests grant: database mssql-demo in namespace demo (no other test uses "demo").
NAMESPACE, DATABASE, REPLICAS = "demo", "mssql-demo", 3
AUTH_SECRET, USER_SECRET = f"{DATABASE}-auth", f"{DATABASE}-new-auth"
TLS_SECRET = f"{DATABASE}-server-cert"  # granted get only
UNLISTED_SECRET = "unrelated-secret"  # in demo, but not in the generated Role's resourceNames
OTHER = "mssql-other"  # another database in the same namespace, which the Role does not name
IDENTITY = "mssql-auth-rotation"  # the ServiceAccount and its namespace, as in rbac.yaml
ELSEWHERE = "demo-elsewhere"  # a namespace the manifests do not bind the identity in
GRANT_WAIT_S = 10.0  # the authorizer learns of new RBAC objects through its own watch
# What the base job template fixes, and what a deployment or run may try to change.
FIXED_IMAGE = "ghcr.io/example/mssql-auth-rotation:0.1.0"
FIXED_ARGS = ["prefect", "flow-run", "execute"]
HOSTILE = {
    "image": "evil.example/anything:latest",
    "command": "sh -c 'cat /var/run/secrets/kubernetes.io/serviceaccount/token'",
    "service_account_name": "default",
    "namespace": NAMESPACE,
    # A run may not grant itself what the operator did not (rotation/operator_settings.py).
    "env": {"PYTHONPATH": "/tmp/planted", "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE": "true"},
}

Manifest = dict[str, Any]


def load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in the manifests, found {len(found)}"
    return found[0]


def create(api: client.ApiClient, doc: Manifest, *, dry_run: bool = False) -> None:
    """Create one manifest as-is; an existing Namespace, ServiceAccount or Lease is fine (as for
    ``kubectl apply``: the grant's Lease has no spec, so applying it again changes nothing), anything
    else is not."""
    core, roles, apps = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
    leases = client.CoordinationV1Api(api)
    ns = doc["metadata"].get("namespace")
    creators: dict[str, Callable[..., Any]] = {
        "Namespace": lambda **kw: core.create_namespace(doc, **kw),
        "ServiceAccount": lambda **kw: core.create_namespaced_service_account(ns, doc, **kw),
        "ConfigMap": lambda **kw: core.create_namespaced_config_map(ns, doc, **kw),
        "ClusterRole": lambda **kw: roles.create_cluster_role(doc, **kw),
        "ClusterRoleBinding": lambda **kw: roles.create_cluster_role_binding(doc, **kw),
        "Role": lambda **kw: roles.create_namespaced_role(ns, doc, **kw),
        "RoleBinding": lambda **kw: roles.create_namespaced_role_binding(ns, doc, **kw),
        "Deployment": lambda **kw: apps.create_namespaced_deployment(ns, doc, **kw),
        "Lease": lambda **kw: leases.create_namespaced_lease(ns, doc, **kw),
    }
    assert doc["kind"] in creators, f"this test does not know how to create a {doc['kind']}"
    try:
        creators[doc["kind"]](**({"dry_run": "All"} if dry_run else {}))
    except ApiException as exc:
        if not (exc.status == 409 and doc["kind"] in ("Namespace", "ServiceAccount", "Lease")):
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
    return load(RBAC_YAML) + load(GRANT_YAML)


@pytest.fixture(scope="module")
def database(sandbox: Sandbox, rbac_docs: list[Manifest]) -> Database:
    db = sandbox.create_database(NAMESPACE, DATABASE, replicas=REPLICAS)
    sandbox.create_database(NAMESPACE, OTHER, replicas=1)  # its pod, PetSet, secret: not ours to touch
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

    def reads(api: client.ApiClient) -> None:
        client.CoreV1Api(api).read_namespaced_secret(AUTH_SECRET, NAMESPACE)
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            c.DB_GROUP, c.DB_VERSION, NAMESPACE, c.DB_PLURAL, DATABASE
        )

    wait_for_grant(path, reads)
    return path


def wait_for_grant(kubeconfig: Path, reads: Callable[[client.ApiClient], object]) -> None:
    """Until ``reads`` (calls the grant allows) stop getting 403: a new Role and its binding take a
    moment to reach the authorizer."""
    api = config.new_client_from_config(str(kubeconfig))
    try:
        deadline = time.monotonic() + GRANT_WAIT_S
        while True:
            try:
                reads(api)
                return
            except ApiException as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        api.close()


@dataclass(frozen=True)
class Identity:
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    rbac: client.RbacAuthorizationV1Api
    coordination: client.CoordinationV1Api


def identity_of(kubeconfig: Path) -> Iterator[Identity]:
    """The API clients of the identity a kubeconfig authenticates as (closed afterwards)."""
    api = config.new_client_from_config(str(kubeconfig))
    try:
        yield Identity(
            client.CoreV1Api(api),
            client.CustomObjectsApi(api),
            client.RbacAuthorizationV1Api(api),
            client.CoordinationV1Api(api),
        )
    finally:
        api.close()


@pytest.fixture(scope="module")
def identity(kubeconfig: Path) -> Iterator[Identity]:
    yield from identity_of(kubeconfig)


@pytest.fixture
def as_identity(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's Kubernetes calls go out as the manifests' ServiceAccount for this test."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))


# -- the manifests themselves ----------------------------------------------------------------------
# The bridge watches MSSQLServerOpsRequests in every namespace, so its grant is cluster-wide; it may
# write only the requests and Events, and read nothing secret.
CLUSTER_WIDE_WRITES = {
    ("mssqlserveropsrequests", "patch"),
    ("mssqlserveropsrequests/status", "patch"),
    ("events", "create"),
}


def test_no_rule_grants_a_wildcard_and_secrets_are_granted_only_by_name() -> None:
    for path in sorted(DEPLOYMENTS.glob("*.yaml")):
        docs = load(path)
        cluster_wide = [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        assert path.name in ("bridge.yaml", "bridge-all.yaml", "rbac-fleet.yaml") or not cluster_wide, (
            path.name
        )
        for role in (d for d in docs if d["kind"] == "ClusterRole"):
            for rule in role["rules"]:
                writes = {(r, v) for r in rule["resources"] for v in rule["verbs"]}
                writes -= {(r, v) for r, v in writes if v in ("get", "list", "watch")}
                assert writes <= CLUSTER_WIDE_WRITES, f"{path.name}: {role['metadata']['name']}: {rule}"
        for role in (d for d in docs if d["kind"] in ("Role", "ClusterRole")):
            where = f"{path.name}: {role['kind']} {role['metadata']['name']}"
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), f"{where}: {field} {rule}"
                assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "patch", "delete"}
                generated = path.name.startswith("rbac-")  # by python -m rotation rbac
                if generated and set(rule["verbs"]) & {"get", "update", "patch", "delete"}:
                    assert rule.get("resourceNames"), f"{where}: {rule['verbs']} on any object: {rule}"
                if any(r.split("/")[0] == "secrets" for r in rule["resources"]):
                    assert generated, f"{where} grants secrets outside a generated grant"
                    assert rule.get("resourceNames"), f"{where}: secrets without resourceNames"
                    assert set(rule["verbs"]) <= {"get", "update"}, where


def test_the_generated_grant_names_the_database_its_replicas_and_its_secrets(
    rbac_docs: list[Manifest],
) -> None:
    account = one(rbac_docs, "ServiceAccount")["metadata"]
    assert (account["namespace"], account["name"]) == (IDENTITY, IDENTITY)
    role = one(rbac_docs, "Role")
    binding = one(rbac_docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": IDENTITY, "namespace": IDENTITY}]
    by_verb: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                by_verb[(resource, verb)] = set(rule.get("resourceNames", []))
    pods = {f"{DATABASE}-{n}" for n in range(REPLICAS)}
    assert by_verb[("pods", "delete")] == by_verb[("pods/eviction", "create")] == pods
    assert by_verb[("petsets", "update")] == by_verb[("mssqlservers", "patch")] == {DATABASE}
    assert by_verb[("mssqlservers/status", "patch")] == {DATABASE}
    assert by_verb[("leases", "update")] == {lock_name(DATABASE)}
    assert ("leases", "create") not in by_verb and ("leases", "delete") not in by_verb
    lease = one(rbac_docs, "Lease")
    assert lease["metadata"]["name"] == lock_name(DATABASE) and "spec" not in lease
    assert by_verb[("secrets", "get")] == {AUTH_SECRET, USER_SECRET, TLS_SECRET}
    assert by_verb[("secrets", "update")] == {AUTH_SECRET, USER_SECRET}


@pytest.mark.parametrize("path", [WORKER_YAML, FLEET_WORKER_YAML], ids=lambda p: p.name)
def test_the_worker_manifests_are_accepted_by_the_api_server(
    sandbox: Sandbox, database: Database, path: Path
) -> None:
    """Server-side dry run (schema and defaults validated, nothing stored) of deployments/worker.yaml,
    and of worker-fleet.yaml (the fleet pool's worker, with worker.yaml's ServiceAccount)."""
    docs = load(path)
    for doc in docs:
        create(sandbox.api, doc, dry_run=True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(load(WORKER_YAML), "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"] and container["resources"]["requests"]


# -- a rotation as the identity --------------------------------------------------------------------
@pytest.mark.usefixtures("as_identity")
def test_a_rotation_succeeds_with_only_the_generated_grant(database: Database) -> None:
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
    # Released by clearing its holder: the Lease of the grant stays for the next run.
    lease = client.CoordinationV1Api(database.sandbox.api).read_namespaced_lease(
        lock_name(DATABASE), NAMESPACE
    )
    assert lease.spec.holder_identity is None and lease.metadata.annotations


@pytest.mark.usefixtures("as_identity")
def test_a_user_secret_the_generated_role_does_not_list_is_refused_before_anything_changes(
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


@pytest.mark.usefixtures("as_identity")
def test_without_the_lease_of_the_grant_the_run_is_refused_saying_what_to_apply(
    database: Database, rbac_docs: list[Manifest]
) -> None:
    """The identity may not create Leases: the lock comes with the grant (`python -m rotation rbac`)."""
    leases = client.CoordinationV1Api(database.sandbox.api)
    leases.delete_namespaced_lease(lock_name(DATABASE), NAMESPACE)
    before = database.secret_data()
    try:
        with pytest.raises(PermanentError, match=r"may not create it \(403\).*python -m rotation rbac"):
            rotate_mssql_auth(namespace=NAMESPACE, database=DATABASE)
        assert database.secret_data() == before
        assert not is_paused(database)
    finally:
        create(database.sandbox.api, one(rbac_docs, "Lease"))
    lease = leases.read_namespaced_lease(lock_name(DATABASE), NAMESPACE)
    assert lease.spec is None or not lease.spec.holder_identity


# -- everything else is refused --------------------------------------------------------------------
@pytest.mark.usefixtures("as_identity")
def test_a_fleet_over_every_namespace_without_the_fleet_grant_is_refused_saying_what_to_grant(
    database: Database,
) -> None:
    with pytest.raises(InvalidRequest, match=r"python -m rotation rbac-fleet"):
        rotate_mssql_fleet(dry_run=True)


# -- the in-cluster fleet's identity (issue 21, item 5) --------------------------------------------
# deployments/rbac-fleet.yaml as shipped (ServiceAccount mssql-auth-rotation-fleet, a list-only
# ClusterRole), and one database of a namespace of its own granted with --fleet; the other is not.
FLEET_NS, GRANTED, UNGRANTED = "demo-fleet", "fleet-granted", "fleet-other"
FLEET_SA = rbac.FLEET_IDENTITY
LONG_AGO = "2020-01-01T00:00:00Z"  # auth-active-from: due under the default max_age


@pytest.fixture(scope="module")
def fleet_databases(sandbox: Sandbox) -> tuple[Database, Database]:
    made = []
    for name, replicas in ((GRANTED, 2), (UNGRANTED, 1)):
        made.append(sandbox.create_database(FLEET_NS, name, replicas=replicas))
        sandbox.core.patch_namespaced_secret(
            f"{name}-auth", FLEET_NS, {"metadata": {"annotations": {c.ANNOTATION_ACTIVE_FROM: LONG_AGO}}}
        )
    return made[0], made[1]


@pytest.fixture(scope="module")
def fleet_kubeconfig(sandbox: Sandbox, fleet_databases: tuple[Database, Database]) -> Iterator[Path]:
    """A token kubeconfig of rbac-fleet.yaml's ServiceAccount, once its grants are in force."""
    docs = load(FLEET_YAML)
    account = one(docs, "ServiceAccount")["metadata"]
    assert (account["namespace"], account["name"]) == (IDENTITY, FLEET_SA)
    sandbox.ensure_namespace(IDENTITY)
    granted = rbac.grant(FLEET_NS, GRANTED, 2, fleet=True)
    for doc in docs + rbac.documents(granted):
        create(sandbox.api, doc)
    path = sandbox.service_account_kubeconfig(IDENTITY, FLEET_SA)

    def reads(api: client.ApiClient) -> None:
        client.CustomObjectsApi(api).list_cluster_custom_object(c.DB_GROUP, c.DB_VERSION, c.DB_PLURAL)
        client.CoreV1Api(api).read_namespaced_secret(f"{GRANTED}-auth", FLEET_NS)

    wait_for_grant(path, reads)
    try:
        yield path
    finally:  # the discovery is cluster-wide: leave no ClusterRole behind for other modules
        roles = client.RbacAuthorizationV1Api(sandbox.api)
        roles.delete_cluster_role_binding(rbac.FLEET_ROLE)
        roles.delete_cluster_role(rbac.FLEET_ROLE)


@pytest.fixture(scope="module")
def fleet_identity(fleet_kubeconfig: Path) -> Iterator[Identity]:
    yield from identity_of(fleet_kubeconfig)


def _status_patch(i: Identity, name: str) -> object:
    return i.custom.patch_namespaced_custom_object_status(
        c.DB_GROUP, c.DB_VERSION, FLEET_NS, c.DB_PLURAL, name, {"status": {"conditions": []}}
    )


FLEET_FORBIDDEN: dict[str, Callable[[Identity], object]] = {
    "list secrets in every namespace": lambda i: i.core.list_secret_for_all_namespaces(),
    "list the secrets of the fleet's namespace": lambda i: i.core.list_namespaced_secret(FLEET_NS),
    "read the ungranted database's auth secret": lambda i: i.core.read_namespaced_secret(
        f"{UNGRANTED}-auth", FLEET_NS
    ),
    "read the ungranted database": lambda i: i.custom.get_namespaced_custom_object(
        c.DB_GROUP, c.DB_VERSION, FLEET_NS, c.DB_PLURAL, UNGRANTED
    ),
    "pause the ungranted database": lambda i: _status_patch(i, UNGRANTED),
    "read the ungranted database's lock": lambda i: i.coordination.read_namespaced_lease(
        lock_name(UNGRANTED), FLEET_NS
    ),
    "evict the ungranted database's pod": lambda i: i.core.create_namespaced_pod_eviction(
        f"{UNGRANTED}-0",
        FLEET_NS,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=f"{UNGRANTED}-0", namespace=FLEET_NS)),
    ),
    "watch MSSQLServers in every namespace": lambda i: i.custom.list_cluster_custom_object(
        c.DB_GROUP, c.DB_VERSION, c.DB_PLURAL, watch=True, timeout_seconds=1, _preload_content=False
    ),
    "read a database granted to the on-demand identity only": lambda i: i.core.read_namespaced_secret(
        AUTH_SECRET, NAMESPACE
    ),
    "create a Lease": lambda i: i.coordination.create_namespaced_lease(
        FLEET_NS, {"metadata": {"name": lock_name(UNGRANTED)}, "spec": {"holderIdentity": "fleet"}}
    ),
}


@pytest.mark.parametrize("attempt", list(FLEET_FORBIDDEN))
def test_the_fleet_identity_is_refused_what_it_was_not_granted(
    fleet_identity: Identity, database: Database, attempt: str
) -> None:
    with pytest.raises(ApiException) as refused:
        FLEET_FORBIDDEN[attempt](fleet_identity)
    assert refused.value.status == 403, refused.value.reason
    assert f"system:serviceaccount:{IDENTITY}:{FLEET_SA}" in str(refused.value.body)


def test_the_fleet_identity_lists_databases_everywhere_and_reads_the_granted_one(
    fleet_identity: Identity, database: Database
) -> None:
    listed = fleet_identity.custom.list_cluster_custom_object(c.DB_GROUP, c.DB_VERSION, c.DB_PLURAL)
    refs = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in listed["items"]}
    assert {(FLEET_NS, GRANTED), (FLEET_NS, UNGRANTED), (NAMESPACE, DATABASE)} <= refs
    fleet_identity.core.read_namespaced_secret(f"{GRANTED}-auth", FLEET_NS)
    fleet_identity.coordination.read_namespaced_lease(lock_name(GRANTED), FLEET_NS)


def restarted(db: Database) -> list[str]:
    """The database's own pods that were restarted (its namespace may hold another database's)."""
    return [pod for pod in terminated_pods(db) if pod.rpartition("-")[0] == db.name]


@proves(
    fault="a fleet run under the in-cluster fleet's identity (rbac-fleet.yaml), over every namespace, with "
    "one due database granted to it (--fleet) and others it was not granted",
    where="Kubernetes RBAC on a real API server (the ServiceAccount's token; 403s)",
    outcome="the granted database rotated; every other one reported skipped with the 403 and the command "
    "that grants it (--fleet), nothing of it read beyond its listing or changed; the fleet run succeeds",
)
def test_a_fleet_run_as_the_fleet_identity_rotates_the_granted_database_and_reports_the_rest(
    fleet_kubeconfig: Path,
    fleet_databases: tuple[Database, Database],
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    granted, ungranted = fleet_databases
    old = granted.secret_data()["password"]
    untouched = {db.name: (db.secret_data(), restarted(db)) for db in (ungranted, database)}
    monkeypatch.setenv("KUBECONFIG", str(fleet_kubeconfig))

    report = rotate_mssql_fleet()  # the scheduled deployments' scope: every namespace

    outcomes = {o.planned.ref: o for o in report.outcomes}
    assert outcomes[f"{FLEET_NS}/{GRANTED}"].outcome == "Successful", outcomes[f"{FLEET_NS}/{GRANTED}"]
    assert_rotated(granted, old)
    for ref in (f"{FLEET_NS}/{UNGRANTED}", f"{NAMESPACE}/{DATABASE}"):
        planned = outcomes[ref].planned
        assert planned.decision is Decision.SKIPPED, planned
        assert "403 Forbidden" in planned.reason, planned.reason
        namespace, name = ref.split("/")
        assert f"python -m rotation rbac --namespace {namespace} --database {name}" in planned.reason
        assert "--fleet" in planned.reason
    for db in (ungranted, database):
        assert (db.secret_data(), restarted(db)) == untouched[db.name]
        assert not is_paused(db)
        assert lock_name(db.name) not in db.sandbox.coordination_leases(db.namespace)


def test_a_rotation_of_an_ungranted_database_as_the_fleet_identity_changes_nothing(
    fleet_kubeconfig: Path, fleet_databases: tuple[Database, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ungranted = fleet_databases
    before = ungranted.secret_data()
    monkeypatch.setenv("KUBECONFIG", str(fleet_kubeconfig))

    with pytest.raises(PermanentError, match=r"403 Forbidden.*deployments/rbac\.yaml"):
        rotate_mssql_auth(namespace=FLEET_NS, database=UNGRANTED)

    assert ungranted.secret_data() == before
    assert not is_paused(ungranted) and not restarted(ungranted)
    assert ungranted.sandbox.coordination_leases(FLEET_NS) == []


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
    # The generated Role names its own database's objects; the same namespace's others are out of reach.
    "read a pod of another database": lambda i: i.core.read_namespaced_pod(f"{OTHER}-0", NAMESPACE),
    "delete a pod of another database": lambda i: i.core.delete_namespaced_pod(f"{OTHER}-0", NAMESPACE),
    "evict a pod of another database": lambda i: _evict(i, f"{OTHER}-0"),
    "delete a pod of its database beyond its replicas": lambda i: i.core.delete_namespaced_pod(
        f"{DATABASE}-{REPLICAS}", NAMESPACE
    ),
    "evict a pod of its database beyond its replicas": lambda i: _evict(i, f"{DATABASE}-{REPLICAS}"),
    "read another PetSet": lambda i: i.custom.get_namespaced_custom_object(
        c.PETSET_GROUP, c.PETSET_VERSION, NAMESPACE, c.PETSET_PLURAL, OTHER
    ),
    "update another PetSet": lambda i: i.custom.replace_namespaced_custom_object(
        c.PETSET_GROUP, c.PETSET_VERSION, NAMESPACE, c.PETSET_PLURAL, OTHER, {"metadata": {"name": OTHER}}
    ),
    "read another MSSQLServer": lambda i: i.custom.get_namespaced_custom_object(
        c.DB_GROUP, c.DB_VERSION, NAMESPACE, c.DB_PLURAL, OTHER
    ),
    "patch another MSSQLServer": lambda i: i.custom.patch_namespaced_custom_object(
        c.DB_GROUP,
        c.DB_VERSION,
        NAMESPACE,
        c.DB_PLURAL,
        OTHER,
        {"spec": {"authSecret": {"name": AUTH_SECRET}}},
    ),
    "patch the status of another MSSQLServer": lambda i: i.custom.patch_namespaced_custom_object_status(
        c.DB_GROUP, c.DB_VERSION, NAMESPACE, c.DB_PLURAL, OTHER, {"status": {"conditions": []}}
    ),
    "watch another MSSQLServer": lambda i: i.custom.list_namespaced_custom_object(
        c.DB_GROUP,
        c.DB_VERSION,
        NAMESPACE,
        c.DB_PLURAL,
        field_selector=f"metadata.name={OTHER}",
        watch=True,
        timeout_seconds=1,
        _preload_content=False,
    ),
    "read another database's auth secret": lambda i: i.core.read_namespaced_secret(
        f"{OTHER}-auth", NAMESPACE
    ),
    "update another database's auth secret": lambda i: i.core.replace_namespaced_secret(
        f"{OTHER}-auth", NAMESPACE, _secret_body(f"{OTHER}-auth")
    ),
    "update the TLS secret (granted get only)": lambda i: i.core.replace_namespaced_secret(
        TLS_SECRET, NAMESPACE, _secret_body(TLS_SECRET)
    ),
    "read the Lease of another database": lambda i: i.coordination.read_namespaced_lease(
        lock_name(OTHER), NAMESPACE
    ),
    "update the Lease of another database": lambda i: i.coordination.replace_namespaced_lease(
        lock_name(OTHER), NAMESPACE, {"metadata": {"name": lock_name(OTHER)}}
    ),
    "delete the Lease of another database": lambda i: i.coordination.delete_namespaced_lease(
        lock_name(OTHER), NAMESPACE
    ),
    "delete its own database's Lease": lambda i: i.coordination.delete_namespaced_lease(
        lock_name(DATABASE), NAMESPACE
    ),
    "create a Lease (a squatter's lock for another database)": lambda i: (
        i.coordination.create_namespaced_lease(
            NAMESPACE,
            {"metadata": {"name": lock_name("mssql-next")}, "spec": {"holderIdentity": "squatter"}},
        )
    ),
}


def _evict(i: Identity, pod: str) -> object:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=NAMESPACE))
    return i.core.create_namespaced_pod_eviction(pod, NAMESPACE, body)


@pytest.mark.parametrize("attempt", list(FORBIDDEN))
def test_the_identity_is_refused_what_the_generated_grant_does_not_name(
    identity: Identity, attempt: str
) -> None:
    with pytest.raises(ApiException) as refused:
        FORBIDDEN[attempt](identity)
    assert refused.value.status == 403, refused.value.reason
    assert f"system:serviceaccount:{IDENTITY}:{IDENTITY}" in str(refused.value.body)


ALLOWED: dict[str, Callable[[Identity], object]] = {
    "read the TLS secret (its CA)": lambda i: i.core.read_namespaced_secret(TLS_SECRET, NAMESPACE),
    "watch its MSSQLServer by name": lambda i: i.custom.list_namespaced_custom_object(
        c.DB_GROUP,
        c.DB_VERSION,
        NAMESPACE,
        c.DB_PLURAL,
        field_selector=f"metadata.name={DATABASE}",
        watch=True,
        timeout_seconds=1,
        _preload_content=False,
    ),
}


@pytest.mark.parametrize("attempt", list(ALLOWED))
def test_the_identity_may_do_what_the_generated_grant_names(identity: Identity, attempt: str) -> None:
    """Granted by name; a 404 (e.g. a database without spec.tls has no server-cert) is an answer."""
    try:
        ALLOWED[attempt](identity)
    except ApiException as exc:
        assert exc.status == 404, f"{attempt}: {exc.status} {exc.reason}"


# -- a generated-password grant: no write that could change a pod template (issue 20, item 4) ------
# A second database and a second ServiceAccount, bound by `python -m rotation rbac` WITHOUT --user-secret.
GENERATED_NS, GENERATED_DB, GENERATED_SA = (
    "demo-generated",
    "mssql-generated",
    "mssql-auth-rotation-generated",
)


@pytest.fixture(scope="module")
def generated_database(sandbox: Sandbox) -> Database:
    return sandbox.create_database(GENERATED_NS, GENERATED_DB, replicas=REPLICAS)


@pytest.fixture(scope="module")
def generated_kubeconfig(sandbox: Sandbox, generated_database: Database) -> Path:
    grant = rbac.grant(GENERATED_NS, GENERATED_DB, REPLICAS, service_account=GENERATED_SA)
    path = sandbox.service_account_kubeconfig(IDENTITY, GENERATED_SA)
    for doc in rbac.documents(grant):
        create(sandbox.api, doc)
    wait_for_grant(
        path, lambda api: client.CoreV1Api(api).read_namespaced_secret(f"{GENERATED_DB}-auth", GENERATED_NS)
    )
    return path


@pytest.fixture(scope="module")
def generated_identity(generated_kubeconfig: Path) -> Iterator[client.CustomObjectsApi]:
    api = config.new_client_from_config(str(generated_kubeconfig))
    try:
        yield client.CustomObjectsApi(api)
    finally:
        api.close()


def test_a_generated_password_rotation_succeeds_without_any_write_to_the_database_or_petset(
    generated_database: Database, generated_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Role has no patch of the MSSQLServer and no update of the PetSet (asserted first): any
    attempt by the run would have failed it with 403."""
    role = rbac.role(rbac.grant(GENERATED_NS, GENERATED_DB, REPLICAS, service_account=GENERATED_SA))
    verbs = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if resource in ("mssqlservers", "petsets")
    }
    read_only = {("mssqlservers", "get"), ("mssqlservers", "watch"), ("mssqlservers", "list")}
    assert verbs == read_only | {("petsets", "get")}
    old = generated_database.secret_data()["password"]
    monkeypatch.setenv("KUBECONFIG", str(generated_kubeconfig))

    report = rotate_mssql_auth(namespace=GENERATED_NS, database=GENERATED_DB)

    assert report.outcome == "Successful"
    new = generated_database.secret_data()["password"]
    assert new != old
    for pod in generated_database.pods:
        assert logs_in(generated_database, pod, new), pod
        assert not logs_in(generated_database, pod, old), pod
    assert generated_database.get()["spec"]["authSecret"]["name"] == f"{GENERATED_DB}-auth"


def _planted_pod_template(secret: str) -> dict[str, Any]:
    """A pod template that mounts a Secret the identity may not read, and runs as another account."""
    return {
        "spec": {
            "serviceAccountName": "default",
            "volumes": [{"name": "planted", "secret": {"secretName": secret}}],
        }
    }


def _update_petset_template(custom: client.CustomObjectsApi) -> object:
    petset = custom.get_namespaced_custom_object(
        c.PETSET_GROUP, c.PETSET_VERSION, GENERATED_NS, c.PETSET_PLURAL, GENERATED_DB
    )
    petset["spec"]["template"]["spec"].update(_planted_pod_template(UNLISTED_SECRET)["spec"])
    return custom.replace_namespaced_custom_object(
        c.PETSET_GROUP,
        c.PETSET_VERSION,
        GENERATED_NS,
        c.PETSET_PLURAL,
        GENERATED_DB,
        petset,
    )


POD_TEMPLATE_EDITS: dict[str, Callable[[client.CustomObjectsApi], object]] = {
    "patch the MSSQLServer's spec.podTemplate": lambda custom: custom.patch_namespaced_custom_object(
        c.DB_GROUP,
        c.DB_VERSION,
        GENERATED_NS,
        c.DB_PLURAL,
        GENERATED_DB,
        {"spec": {"podTemplate": _planted_pod_template(UNLISTED_SECRET)}},
    ),
    "patch the MSSQLServer's spec.authSecret": lambda custom: custom.patch_namespaced_custom_object(
        c.DB_GROUP,
        c.DB_VERSION,
        GENERATED_NS,
        c.DB_PLURAL,
        GENERATED_DB,
        {"spec": {"authSecret": {"name": UNLISTED_SECRET}}},
    ),
    "update the PetSet's pod template": _update_petset_template,
}


@pytest.mark.parametrize("edit", list(POD_TEMPLATE_EDITS))
def test_the_generated_password_identity_cannot_edit_a_pod_template(
    generated_identity: client.CustomObjectsApi, generated_database: Database, edit: str
) -> None:
    before = generated_database.get()["metadata"]["generation"]

    with pytest.raises(ApiException) as refused:
        POD_TEMPLATE_EDITS[edit](generated_identity)

    assert refused.value.status == 403, refused.value.reason
    assert f"system:serviceaccount:{IDENTITY}:{GENERATED_SA}" in str(refused.value.body)
    assert generated_database.get()["metadata"]["generation"] == before


def test_the_user_secret_identity_could_edit_the_petset_template_which_the_admission_policy_is_for(
    kubeconfig: Path,
) -> None:
    """The grant with --user-secret keeps update of the PetSet (the switch needs it). RBAC cannot
    narrow it: a server-side dry run of the same edit is allowed (nothing is stored). On Kubernetes
    1.30+, deployments/validating-admission-policy.yaml refuses it; this 1.20 server has no such
    policies, so that layer is checked as data only (tests/unit/test_rbac_admission_policy.py)."""
    api = config.new_client_from_config(str(kubeconfig))
    try:
        custom = client.CustomObjectsApi(api)
        petset = custom.get_namespaced_custom_object(
            c.PETSET_GROUP, c.PETSET_VERSION, NAMESPACE, c.PETSET_PLURAL, DATABASE
        )
        petset["spec"]["template"]["spec"]["serviceAccountName"] = "default"
        custom.replace_namespaced_custom_object(
            c.PETSET_GROUP, c.PETSET_VERSION, NAMESPACE, c.PETSET_PLURAL, DATABASE, petset, dry_run="All"
        )
    finally:
        api.close()


# -- the kubernetes work pool's base job template --------------------------------------------------
def in_cluster(stack: PrefectStack) -> dict[str, Any]:
    [deployment] = [d for d in stack.api("POST", "/deployments/filter", {}) if d["name"] == "in-cluster"]
    return deployment  # type: ignore[no-any-return]


def refusal(call: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call()
    return refused.value.code, refused.value.read().decode()


def rendered_job(stack: PrefectStack, flow_run_id: str, pool_name: str = K8S_POOL) -> Manifest:
    """The Job the kubernetes worker would create for this run: prefect-kubernetes' job configuration
    resolved as the worker resolves it (pool template + deployment and run job variables)."""

    async def render() -> Manifest:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            async with get_client() as prefect:
                run = await prefect.read_flow_run(flow_run_id)  # type: ignore[arg-type]
                pool = await prefect.read_work_pool(pool_name)
                configuration = await KubernetesWorker.job_configuration.resolve_for_flow_run(
                    run, client=prefect, work_pool=pool, worker_name="test-rbac"
                )
                assert configuration.namespace == IDENTITY
                return dict(configuration.job_manifest)

    return asyncio.run(render())


def dry_run_job(sandbox: Sandbox, job: Manifest) -> Manifest:
    """The API server's server-side dry run of creating the Job as rendered (validated, not stored).

    Sent raw, as the worker's own client (kubernetes_asyncio) sends it: the manifest keeps the two
    fields prefect-kubernetes requires in the pod spec (parallelism, completions), which the typed
    client refuses and the API server drops.
    """
    request = sandbox.api.param_serialize(
        method="POST",
        resource_path=f"/apis/batch/v1/namespaces/{IDENTITY}/jobs",
        query_params=[("dryRun", "All")],
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=job,
        auth_settings=["BearerToken"],
    )
    response = sandbox.api.call_api(*request)
    text = response.read().decode()
    assert response.status == 201, text
    return json.loads(text)  # type: ignore[no-any-return]


def assert_locked(job: Manifest, account: str = IDENTITY) -> None:
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert job["metadata"]["namespace"] == IDENTITY
    assert pod["serviceAccountName"] == account
    assert container["image"] == FIXED_IMAGE
    assert container["args"] == FIXED_ARGS and "command" not in container
    assert "PYTHONPATH" not in {env["name"] for env in container["env"]}
    trust = [e for e in container["env"] if e["name"] == "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE"]
    assert trust == [{"name": "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE", "value": "false"}]


def test_the_pool_template_fixes_image_command_namespace_and_service_account(stack: PrefectStack) -> None:
    template = stack.api("GET", f"/work_pools/{K8S_POOL}")["base_job_template"]

    assert template == json.loads(K8S_BASE_JOB_TEMPLATE.read_text())
    assert template["variables"]["additionalProperties"] is False
    assert set(template["variables"]["properties"]) == {"finished_job_ttl"}
    placeholders = {p for p in json.dumps(template["job_configuration"]).split('"') if "{{" in p}
    assert placeholders == {"{{ finished_job_ttl }}"}
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = pod["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert in_cluster(stack)["job_variables"] == {"finished_job_ttl": 3600}  # prefect.yaml


@pytest.mark.parametrize("variable", list(HOSTILE))
def test_a_run_or_a_deployment_that_sets_a_fixed_job_variable_is_refused(
    stack: PrefectStack, variable: str
) -> None:
    deployment = in_cluster(stack)
    run = {"parameters": {"namespace": NAMESPACE, "database": DATABASE}}
    hostile = {variable: HOSTILE[variable]}

    status, detail = refusal(
        lambda: stack.api(
            "POST", f"/deployments/{deployment['id']}/create_flow_run", run | {"job_variables": hostile}
        )
    )
    assert status == 422 and f"'{variable}' was unexpected" in detail, detail
    status, detail = refusal(
        lambda: stack.api(
            "POST",
            "/deployments/",
            {
                "name": f"hostile-{variable.replace('_', '-')}",
                "flow_id": deployment["flow_id"],
                "entrypoint": deployment["entrypoint"],
                "work_pool_name": K8S_POOL,
                "job_variables": hostile,
            },
        )
    )
    assert status == 422 and f"'{variable}' was unexpected" in detail, detail


def test_a_run_may_set_the_one_job_variable_within_its_bounds(stack: PrefectStack) -> None:
    deployment = in_cluster(stack)
    path = f"/deployments/{deployment['id']}/create_flow_run"
    run = {"parameters": {"namespace": NAMESPACE, "database": DATABASE}}

    status, detail = refusal(
        lambda: stack.api("POST", path, run | {"job_variables": {"finished_job_ttl": 5}})
    )
    assert status == 422 and "finished_job_ttl" in detail

    accepted = stack.api("POST", path, run | {"job_variables": {"finished_job_ttl": 120}})
    try:
        job = rendered_job(stack, accepted["id"])
        assert job["spec"]["ttlSecondsAfterFinished"] == 120
        assert_locked(job)
    finally:
        stack.api("DELETE", f"/flow_runs/{accepted['id']}")  # no worker polls this pool here


def test_where_the_server_does_not_check_job_variables_the_worker_ignores_them(
    stack: PrefectStack, sandbox: Sandbox, database: Database
) -> None:
    """Prefect 3.9.1 stores job variables unchecked on two paths: PATCH of a deployment without a
    work_pool_name, and POST /flow_runs/. The template has no placeholder for them, so the worker's
    rendering leaves the image, command, namespace and service account as it fixes them."""
    deployment = in_cluster(stack)
    stack.api("PATCH", f"/deployments/{deployment['id']}", {"job_variables": HOSTILE})
    try:
        assert in_cluster(stack)["job_variables"] == HOSTILE  # stored as sent
        run = stack.api(
            "POST",
            "/flow_runs/",
            {
                "flow_id": deployment["flow_id"],
                "deployment_id": deployment["id"],
                "parameters": {"namespace": NAMESPACE, "database": DATABASE},
                "job_variables": HOSTILE | {"finished_job_ttl": 90},
                "state": {"type": "SCHEDULED"},
            },
        )
        assert stack.api("GET", f"/flow_runs/{run['id']}")["job_variables"]["image"] == HOSTILE["image"]

        job = rendered_job(stack, run["id"])

        assert_locked(job)
        assert job["spec"]["ttlSecondsAfterFinished"] == 90  # a real variable still applies
        assert dry_run_job(sandbox, job)["spec"]["template"]["spec"]["serviceAccountName"] == IDENTITY
        stack.api("DELETE", f"/flow_runs/{run['id']}")
    finally:
        stack.api("PATCH", f"/deployments/{deployment['id']}", {"job_variables": {"finished_job_ttl": 3600}})


# -- the fleet's kubernetes work pool (issue 21, item 5) -------------------------------------------
def fleet_deployment(stack: PrefectStack, name: str) -> dict[str, Any]:
    [deployment] = [d for d in stack.api("POST", "/deployments/filter", {}) if d["name"] == name]
    return deployment  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["scheduled-in-cluster", "recover-in-cluster"])
def test_the_fleet_pool_runs_the_in_cluster_fleet_under_the_fleet_identity_only(
    stack: PrefectStack, sandbox: Sandbox, name: str
) -> None:
    """The pool as stored is the file; a run of each in-cluster fleet deployment renders a Job for
    ServiceAccount mssql-auth-rotation-fleet (accepted by the API server's dry run), and a run that
    asks for another identity or image is refused."""
    template = stack.api("GET", f"/work_pools/{K8S_FLEET_POOL}")["base_job_template"]
    assert template == json.loads(K8S_FLEET_JOB_TEMPLATE.read_text())
    deployment = fleet_deployment(stack, name)
    assert deployment["work_pool_name"] == K8S_FLEET_POOL
    path = f"/deployments/{deployment['id']}/create_flow_run"
    for variable in ("service_account_name", "image"):
        hostile = {"job_variables": {variable: HOSTILE[variable]}}
        status, detail = refusal(functools.partial(stack.api, "POST", path, hostile))
        assert status == 422 and f"'{variable}' was unexpected" in detail, detail

    run = stack.api("POST", path, {})
    try:
        job = rendered_job(stack, run["id"], K8S_FLEET_POOL)
        assert_locked(job, rbac.FLEET_IDENTITY)
        assert dry_run_job(sandbox, job)["spec"]["template"]["spec"]["serviceAccountName"] == FLEET_SA
    finally:
        stack.api("DELETE", f"/flow_runs/{run['id']}")  # no worker polls this pool here
