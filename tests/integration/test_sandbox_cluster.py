"""The sandbox behaves like a KubeDB cluster, as seen through the official ``kubernetes`` client and pymssql.

No mocks: every check goes through the real kube-apiserver or a real TDS login. The expected names and
shapes are written out here rather than imported from ``sandbox.kubedb_shapes``, so the sandbox is checked
against what KubeDB does instead of against itself. Tests that only read share one module database; tests
that change something get a fresh database in a fresh namespace.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pymssql
import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import Database, Sandbox

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
PETSET_GROUP, PETSET_VERSION, PETSET_PLURAL = "apps.k8s.appscode.com", "v1", "petsets"
SQL_PORT = 1433
KUBEDB_LABELS = {
    "app.kubernetes.io/name": "mssqlservers.kubedb.com",
    "app.kubernetes.io/managed-by": "kubedb.com",
    "app.kubernetes.io/component": "database",
}
WAIT_S = 15.0
# Long enough for several readiness probes (the emulated kubelet probes every 0.2 s).
STAYS_NOT_READY_S = 1.0
KUBECTL = "/usr/bin/kubectl"

Obj = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------------
def wait_for(
    list_fn: Callable[..., Any],
    predicate: Callable[[Obj], bool],
    what: str,
    *args: Any,
    timeout: float = WAIT_S,
    **kwargs: Any,
) -> Obj:
    """List, then watch from the listing's resourceVersion, until an object satisfies ``predicate``.

    Objects are the API server's raw JSON (dicts), for built-in and custom resources alike.
    """
    deadline = time.monotonic() + timeout
    while True:
        listing = json.loads(list_fn(*args, _preload_content=False, **kwargs).data)
        for item in listing["items"]:
            if predicate(item):
                return item  # type: ignore[no-any-return]
        resource_version = listing["metadata"]["resourceVersion"]
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                for event in watch.Watch().stream(
                    list_fn,
                    *args,
                    resource_version=resource_version,
                    timeout_seconds=max(1, math.ceil(remaining)),
                    deserialize=False,
                    **kwargs,
                ):
                    obj = event["object"]
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED") and predicate(obj):
                        return obj  # type: ignore[no-any-return]
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: the watch fell behind; list again
                raise


def wait_for_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    predicate: Callable[[Obj], bool],
    what: str,
    timeout: float = WAIT_S,
) -> Obj:
    return wait_for(
        core.list_namespaced_pod,
        predicate,
        f"pod {name} {what}",
        namespace,
        field_selector=f"metadata.name={name}",
        timeout=timeout,
    )


def wait_for_database(
    custom: client.CustomObjectsApi, db: Database, predicate: Callable[[Obj], bool], what: str
) -> Obj:
    return wait_for(
        custom.list_namespaced_custom_object,
        predicate,
        f"{db.namespace}/{db.name} {what}",
        GROUP,
        VERSION,
        db.namespace,
        PLURAL,
        field_selector=f"metadata.name={db.name}",
    )


def ready_status(pod: Obj) -> str | None:
    """The pod's Ready condition ('True'/'False'), or None before the kubelet has written one."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), None)


def sql_connect(ip: str, password: str) -> pymssql.Connection:
    return pymssql.connect(
        server=ip,
        port=str(SQL_PORT),
        user="sa",
        password=password,
        login_timeout=5,
        timeout=5,
        autocommit=True,
        encryption="require",  # tests never send a password in clear text (tests/e2e/test_no_leaks.py)
    )


def patch_status(custom: client.CustomObjectsApi, db: Database, status: Obj) -> Obj:
    return custom.patch_namespaced_custom_object_status(  # type: ignore[no-any-return]
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"status": status}
    )


def paused_condition(generation: int) -> Obj:
    return {
        "type": "Paused",
        "status": "True",
        "reason": "Paused",
        "message": "paused by test_sandbox_cluster",
        "observedGeneration": generation,
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def secret_password(core: client.CoreV1Api, db: Database) -> str:
    secret = core.read_namespaced_secret(f"{db.name}-auth", db.namespace)
    return base64.b64decode(secret.data["password"]).decode()


def new_password() -> str:
    """Passes SQL Server's policy: upper, lower and digits, 19 characters."""
    return f"Rot{secrets.token_hex(8)}"


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_namespace(sandbox: Sandbox) -> str:
    name = f"m-{uuid.uuid4().hex[:8]}"
    sandbox.ensure_namespace(name)
    return name


@pytest.fixture(scope="module")
def ag_db(sandbox: Sandbox, shared_namespace: str) -> Database:
    """A three-replica Availability Group that the tests using it only read."""
    return sandbox.create_database(shared_namespace, "ag", replicas=3)


@pytest.fixture(scope="module")
def standalone_db(sandbox: Sandbox, shared_namespace: str) -> Database:
    """A single-replica database that the tests using it only read."""
    return sandbox.create_database(shared_namespace, "solo", replicas=1)


@pytest.fixture
def fresh_db(sandbox: Sandbox, namespace: str) -> Database:
    """A single-replica database of one test's own, for tests that change it."""
    return sandbox.create_database(namespace, "db", replicas=1)


@pytest.fixture
def restricted_api(sandbox: Sandbox, namespace: str) -> Iterator[client.ApiClient]:
    """An API client that authenticates as a fresh service account with no RBAC of its own."""
    path = sandbox.service_account_kubeconfig(namespace, "reader")
    api = config.new_client_from_config(str(path))
    try:
        yield api
    finally:
        api.close()


# -- the KubeDB shape ------------------------------------------------------------------------------
def test_a_multi_replica_mssqlserver_is_an_availability_group_that_is_ready(
    custom: client.CustomObjectsApi, ag_db: Database
) -> None:
    db = custom.get_namespaced_custom_object(GROUP, VERSION, ag_db.namespace, PLURAL, ag_db.name)

    assert db["kind"] == "MSSQLServer"
    assert db["spec"]["replicas"] == 3
    assert db["spec"]["topology"]["mode"] == "AvailabilityGroup"
    assert db["spec"]["authSecret"]["name"] == "ag-auth"
    assert db["status"]["phase"] == "Ready"


def test_a_single_replica_mssqlserver_has_no_topology(
    custom: client.CustomObjectsApi, standalone_db: Database
) -> None:
    db = custom.get_namespaced_custom_object(
        GROUP, VERSION, standalone_db.namespace, PLURAL, standalone_db.name
    )

    assert db["spec"]["replicas"] == 1
    assert "topology" not in db["spec"]
    assert db["spec"]["authSecret"]["name"] == "solo-auth"
    assert db["status"]["phase"] == "Ready"


def test_the_auth_secret_is_basic_auth_for_sa(core: client.CoreV1Api, ag_db: Database) -> None:
    secret = core.read_namespaced_secret("ag-auth", ag_db.namespace)

    assert secret.type == "kubernetes.io/basic-auth"
    assert base64.b64decode(secret.data["username"]).decode() == "sa"
    assert len(base64.b64decode(secret.data["password"])) >= 8


def test_the_petset_restarts_pods_only_on_delete_and_feeds_the_sa_password_from_the_secret(
    custom: client.CustomObjectsApi, ag_db: Database
) -> None:
    owner = custom.get_namespaced_custom_object(GROUP, VERSION, ag_db.namespace, PLURAL, ag_db.name)
    petset = custom.get_namespaced_custom_object(
        PETSET_GROUP, PETSET_VERSION, ag_db.namespace, PETSET_PLURAL, ag_db.name
    )

    assert petset["spec"]["replicas"] == 3
    assert petset["spec"]["updateStrategy"]["type"] == "OnDelete"
    assert [(o["kind"], o["uid"]) for o in petset["metadata"]["ownerReferences"]] == [
        ("MSSQLServer", owner["metadata"]["uid"])
    ]
    containers = {c["name"]: c for c in petset["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"mssql", "mssql-coordinator"}
    for container in containers.values():
        env = {e["name"]: e for e in container["env"]}
        assert env["MSSQL_SA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ag-auth", "key": "password"}


def test_an_availability_groups_primary_secondary_and_governing_services_listen_on_1433(
    core: client.CoreV1Api, ag_db: Database
) -> None:
    services = {s.metadata.name: s for s in core.list_namespaced_service(ag_db.namespace).items}

    assert {n for n in services if n.split("-")[0] == "ag"} == {"ag", "ag-secondary", "ag-pods", "ag-stats"}
    for name in ("ag", "ag-secondary", "ag-pods"):
        assert [p.port for p in services[name].spec.ports] == [SQL_PORT]
    assert services["ag"].spec.selector["kubedb.com/role"] == "primary"
    assert services["ag-secondary"].spec.selector["kubedb.com/role"] == "secondary"
    assert services["ag-pods"].spec.cluster_ip == "None"


def test_pods_carry_kubedb_labels_and_roles_and_are_ready_on_distinct_loopback_ips(
    core: client.CoreV1Api, ag_db: Database
) -> None:
    listing = core.list_namespaced_pod(ag_db.namespace, label_selector="app.kubernetes.io/instance=ag")
    pods = {p.metadata.name: p for p in listing.items}

    assert sorted(pods) == ["ag-0", "ag-1", "ag-2"]
    roles = {name: pod.metadata.labels.get("kubedb.com/role") for name, pod in pods.items()}
    assert roles == {"ag-0": "primary", "ag-1": "secondary", "ag-2": "secondary"}
    for name, pod in pods.items():
        assert KUBEDB_LABELS.items() <= pod.metadata.labels.items()
        assert pod.metadata.labels["app.kubernetes.io/instance"] == "ag"
        assert pod.spec.node_name
        assert [(c.type, c.status) for c in pod.status.conditions if c.type == "Ready"] == [("Ready", "True")]
        assert pod.status.pod_ip.startswith("127.")
        assert pod.status.pod_ip == ag_db.ip(name)
    assert len({pod.status.pod_ip for pod in pods.values()}) == 3


# -- API server semantics --------------------------------------------------------------------------
def test_a_status_subresource_patch_changes_only_the_status(
    custom: client.CustomObjectsApi, fresh_db: Database
) -> None:
    before = fresh_db.get()

    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        fresh_db.namespace,
        PLURAL,
        fresh_db.name,
        {"spec": {"replicas": 5, "version": "changed-through-status"}, "status": {"probe": "through-status"}},
    )

    after = fresh_db.get()
    assert after["status"]["probe"] == "through-status"
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_a_normal_patch_cannot_change_the_status(custom: client.CustomObjectsApi, fresh_db: Database) -> None:
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        fresh_db.namespace,
        PLURAL,
        fresh_db.name,
        {"metadata": {"labels": {"probe": "main-resource"}}, "status": {"phase": "Halted", "probe": "x"}},
    )

    after = fresh_db.get()
    assert after["metadata"]["labels"]["probe"] == "main-resource"
    assert after["status"]["phase"] == "Ready"
    assert "probe" not in after["status"]


def test_writes_with_a_stale_resource_version_are_refused_with_409(
    custom: client.CustomObjectsApi, fresh_db: Database
) -> None:
    stale = fresh_db.get()
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, fresh_db.namespace, PLURAL, fresh_db.name, {"metadata": {"labels": {"bumped": "1"}}}
    )

    with pytest.raises(ApiException) as replaced:
        custom.replace_namespaced_custom_object(
            GROUP, VERSION, fresh_db.namespace, PLURAL, fresh_db.name, stale
        )
    with pytest.raises(ApiException) as patched:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            fresh_db.namespace,
            PLURAL,
            fresh_db.name,
            {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"], "labels": {"late": "1"}}},
        )

    assert (replaced.value.status, patched.value.status) == (409, 409)
    assert "late" not in fresh_db.get()["metadata"]["labels"]


# -- the emulated PetSet controller and kubelet ----------------------------------------------------
def test_an_evicted_pod_comes_back_ready_as_a_secondary_with_its_labels_but_a_new_uid_and_ip(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=3)
    old = core.read_namespaced_pod("db-1", namespace)

    core.create_namespaced_pod_eviction(
        "db-1", namespace, client.V1Eviction(metadata=client.V1ObjectMeta(name="db-1", namespace=namespace))
    )

    new = wait_for_pod(
        core,
        namespace,
        "db-1",
        lambda p: (
            p["metadata"]["uid"] != old.metadata.uid
            and ready_status(p) == "True"
            and "kubedb.com/role" in p["metadata"]["labels"]
        ),
        "recreated, Ready and given a role",
    )
    assert new["metadata"]["labels"] == old.metadata.labels
    assert new["metadata"]["labels"]["kubedb.com/role"] == "secondary"
    assert new["status"]["podIP"] == db.ip("db-1") != old.status.pod_ip


def test_a_pod_restarted_with_a_password_its_login_does_not_know_stays_not_ready_until_the_login_matches(
    core: client.CoreV1Api, fresh_db: Database
) -> None:
    pod = fresh_db.pods[0]
    old_uid = core.read_namespaced_pod(pod, fresh_db.namespace).metadata.uid
    password = new_password()
    core.patch_namespaced_secret(
        f"{fresh_db.name}-auth", fresh_db.namespace, {"stringData": {"password": password}}
    )

    core.delete_namespaced_pod(pod, fresh_db.namespace)

    restarted = wait_for_pod(
        core,
        fresh_db.namespace,
        pod,
        lambda p: p["metadata"]["uid"] != old_uid and ready_status(p) == "False",
        "recreated and NotReady",
    )
    uid = restarted["metadata"]["uid"]
    with pytest.raises(TimeoutError):
        wait_for_pod(
            core,
            fresh_db.namespace,
            pod,
            lambda p: ready_status(p) == "True",
            "Ready",
            timeout=STAYS_NOT_READY_S,
        )

    fresh_db.instance(pod).set_login("sa", password, sysadmin=True)

    ready = wait_for_pod(
        core, fresh_db.namespace, pod, lambda p: ready_status(p) == "True", "Ready by the readiness probe"
    )
    assert ready["metadata"]["uid"] == uid


# -- the emulated provisioner ----------------------------------------------------------------------
def test_the_timeline_records_whether_the_database_was_paused_when_its_secret_was_written(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, fresh_db: Database
) -> None:
    secret = f"{fresh_db.name}-auth"
    generation = fresh_db.get()["metadata"]["generation"]

    patch_status(custom, fresh_db, {"conditions": [paused_condition(generation)]})
    while_paused = core.patch_namespaced_secret(
        secret, fresh_db.namespace, {"metadata": {"annotations": {"probe": "while-paused"}}}
    )
    patch_status(custom, fresh_db, {"conditions": []})
    after_resume = core.patch_namespaced_secret(
        secret, fresh_db.namespace, {"metadata": {"annotations": {"probe": "after-resume"}}}
    )

    written = {int(while_paused.metadata.resource_version), int(after_resume.metadata.resource_version)}
    deadline = time.monotonic() + WAIT_S
    while not written <= {e.resource_version for e in sandbox.timeline.entries(fresh_db.namespace)}:
        assert time.monotonic() < deadline, "the provisioner did not record both secret writes"
        time.sleep(0.02)  # the timeline offers no wait for secret events
    entries = fresh_db.timeline()  # also waits until the pause and resume have been observed
    secret_writes = [e for e in entries if e.kind == "secret-written" and e.name == secret]
    assert [e.paused[fresh_db.name] for e in secret_writes] == [True, False]
    assert [e.kind for e in entries if e.kind in ("paused", "resumed")] == ["paused", "resumed"]


def test_the_provisioner_leaves_a_paused_databases_petset_alone_and_reconciles_it_after_resume(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, fresh_db: Database
) -> None:
    generation = fresh_db.get()["metadata"]["generation"]
    patch_status(custom, fresh_db, {"conditions": [paused_condition(generation)]})
    core.create_namespaced_secret(
        fresh_db.namespace,
        {"metadata": {"name": "moved-auth"}, "stringData": {"username": "sa", "password": new_password()}},
    )

    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        fresh_db.namespace,
        PLURAL,
        fresh_db.name,
        {"spec": {"authSecret": {"name": "moved-auth"}}},
    )
    sandbox.settle()  # the provisioner has seen the change and decided

    def petset_secret() -> str:
        petset = custom.get_namespaced_custom_object(
            PETSET_GROUP, PETSET_VERSION, fresh_db.namespace, PETSET_PLURAL, fresh_db.name
        )
        mssql = next(c for c in petset["spec"]["template"]["spec"]["containers"] if c["name"] == "mssql")
        env = next(e for e in mssql["env"] if e["name"] == "MSSQL_SA_PASSWORD")
        return str(env["valueFrom"]["secretKeyRef"]["name"])

    assert petset_secret() == f"{fresh_db.name}-auth"

    patch_status(custom, fresh_db, {"conditions": []})

    sandbox.wait_for(lambda: petset_secret() == "moved-auth", "the PetSet to follow spec.authSecret.name")


# -- SQL Server behind the pods --------------------------------------------------------------------
def test_the_secret_password_logs_in_as_sa_on_every_pod_ip_and_each_instance_is_named_after_its_pod(
    core: client.CoreV1Api, ag_db: Database
) -> None:
    password = secret_password(core, ag_db)
    pods = core.list_namespaced_pod(ag_db.namespace, label_selector="app.kubernetes.io/instance=ag").items

    names = {}
    for pod in pods:
        with closing(sql_connect(pod.status.pod_ip, password)) as conn, closing(conn.cursor()) as cursor:
            cursor.execute("SELECT @@SERVERNAME")
            row = cursor.fetchone()
        assert row is not None
        names[pod.metadata.name] = row[0]

    assert names == {"ag-0": "ag-0", "ag-1": "ag-1", "ag-2": "ag-2"}


def test_a_wrong_password_fails_with_login_failed_18456(core: client.CoreV1Api, ag_db: Database) -> None:
    ip = core.read_namespaced_pod("ag-0", ag_db.namespace).status.pod_ip
    # pymssql reports the server's text only for the first failure of a process, so the
    # login is tried in a fresh interpreter (still the real pymssql over TCP).
    probe = (
        "import os, pymssql, sys\n"
        "try:\n"
        "    password = os.environ['PROBE_PASSWORD']\n"
        "    pymssql.connect(sys.argv[1], 'sa', password, port='1433', login_timeout=5,\n"
        "                    encryption='require')\n"
        "except pymssql.OperationalError as exc:\n"
        "    number, message = exc.args[0]\n"
        "    print(number, message.decode(errors='replace').split('DB-Lib')[0])\n"
    )
    wrong = secret_password(core, ag_db) + "-wrong"
    result = subprocess.run(
        [sys.executable, "-c", probe, ip],
        env={**os.environ, "PROBE_PASSWORD": wrong},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.strip() == "18456 Login failed for user 'sa'."


# -- identities and tools --------------------------------------------------------------------------
def test_a_service_account_without_rbac_is_forbidden_to_list_secrets_until_a_role_grants_it(
    sandbox: Sandbox, namespace: str, restricted_api: client.ApiClient
) -> None:
    as_reader = client.CoreV1Api(restricted_api)
    with pytest.raises(ApiException) as forbidden:
        as_reader.list_namespaced_secret(namespace)
    assert forbidden.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in str(forbidden.value.body)

    rbac = client.RbacAuthorizationV1Api(sandbox.api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )

    deadline = time.monotonic() + WAIT_S
    while True:  # the authorizer learns of new RBAC objects through its own watch
        try:
            as_reader.list_namespaced_secret(namespace)
            break
        except ApiException as exc:
            assert exc.status == 403 and time.monotonic() < deadline, "the grant never took effect"
            time.sleep(0.05)
    with pytest.raises(ApiException) as elsewhere:
        as_reader.list_namespaced_secret("default")
    assert elsewhere.value.status == 403


def test_kubectl_lists_the_database_and_its_objects(sandbox: Sandbox, ag_db: Database) -> None:
    kubectl = KUBECTL if os.access(KUBECTL, os.X_OK) else shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(f"kubectl is missing (looked for {KUBECTL} and on PATH); CI installs it")

    result = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(sandbox.kubeconfig),
            "--request-timeout=10s",
            "get",
            "mssqlservers,petsets,pods,secrets",
            "-n",
            ag_db.namespace,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    listed = ("mssqlserver.kubedb.com/ag", "petset.apps.k8s.appscode.com/ag", "pod/ag-0", "secret/ag-auth")
    for expected in listed:
        assert expected in result.stdout
