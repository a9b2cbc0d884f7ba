"""The sandbox is as strict as real KubeDB (docs/kubedb-fidelity.md), seen through the official
``kubernetes`` client and real pymssql logins over TCP.

Addresses change on every restart, roles come from an emulated coordinator (with a blank window when
the primary goes), the provisioner answers the pause handshake and keeps checking health while
paused, the ops webhook resumes databases, even AGs get an arbiter, the auth secret looks like
KubeDB's, and the REAL API server refuses evictions by PodDisruptionBudgets whose status the real
disruption controller (kube-controller-manager) computes. Transient states (a blank role, a NotReady
phase) are read back from the API server's watch history, which replays every version since a
resourceVersion.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import math
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pymssql
import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import Database, Sandbox, Settings
from tests.support import create_basic_auth_secret, freetds_conf, logs_in, pymssql_attempt, server_args

GROUP, VERSION, PLURAL = "kubedb.com", "v1alpha2", "mssqlservers"
PETSET_GROUP, PETSET_VERSION, PETSET_PLURAL = "apps.k8s.appscode.com", "v1", "petsets"
OPS_CRD = "mssqlserveropsrequests.ops.kubedb.com"
ROLE = "kubedb.com/role"
WAIT_S = 15.0
STAYS_S = 1.0  # several readiness probes (every 0.2 s) and controller passes
Obj = dict[str, Any]


def database_labels(db: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mssqlservers.kubedb.com",
        "app.kubernetes.io/instance": db,
        "app.kubernetes.io/managed-by": "kubedb.com",
        "app.kubernetes.io/component": "database",
    }


# -- helpers ---------------------------------------------------------------------------------------
def new_password() -> str:
    return f"Fid{secrets.token_hex(8)}"


def pod(core: client.CoreV1Api, namespace: str, name: str) -> Obj:
    return json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data)  # type: ignore[no-any-return]


def labels(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def is_ready(obj: Obj) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def roles(core: client.CoreV1Api, db: Database) -> dict[str, str | None]:
    """Each replica's role label (None without one, or while the pod is away)."""
    listed = core.list_namespaced_pod(db.namespace, label_selector=f"app.kubernetes.io/instance={db.name}")
    found = {p.metadata.name: (p.metadata.labels or {}).get(ROLE) for p in listed.items}
    return {name: found.get(name) for name in db.pods}


def phase(db: Database) -> str | None:
    phase: str | None = (db.get().get("status") or {}).get("phase")
    return phase


def restarted_and_ready(core: client.CoreV1Api, db: Database, name: str, old_uid: str) -> Callable[[], bool]:
    """The pod is a new one (another uid), Ready, and has its role (an AG replica) if it should."""

    def check() -> bool:
        try:
            current = pod(core, db.namespace, name)
        except ApiException:
            return False
        has_role = db.replicas == 1 or name == db.arbiter or ROLE in labels(current)
        return current["metadata"]["uid"] != old_uid and is_ready(current) and has_role

    return check


def sql(db: Database, name: str, password: str, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement on the pod's SQL Server over TCP; the rows it returned."""
    target = server_args(db.ip(name), db.port(name))
    connection = pymssql.connect(
        **target,
        user="sa",
        password=password,
        login_timeout=5,
        timeout=5,
        autocommit=True,
        encryption="require",  # its ALTER LOGINs carry passwords: never in clear text
    )
    with closing(connection), closing(connection.cursor()) as cursor:
        cursor.execute(statement)
        return list(cursor.fetchall()) if cursor.description else []


def sql_role(db: Database, name: str, password: str) -> str:
    rows = sql(
        db, name, password, "SELECT role_desc FROM sys.dm_hadr_availability_replica_states WHERE is_local = 1"
    )
    return str(rows[0][0])


def alter_sa_password(db: Database, name: str, old: str, new: str) -> None:
    sql(db, name, old, f"ALTER LOGIN [sa] WITH PASSWORD = N'{new}' OLD_PASSWORD = N'{old}'")


def refuses_connections(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def evict(core: client.CoreV1Api, namespace: str, name: str) -> None:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
    core.create_namespaced_pod_eviction(name, namespace, body)


def refusal(core: client.CoreV1Api, namespace: str, name: str) -> Obj:
    """Evict and expect the API server's refusal; its Status body."""
    with pytest.raises(ApiException) as refused:
        evict(core, namespace, name)
    assert refused.value.status == 429, refused.value.body
    return json.loads(refused.value.body)  # type: ignore[no-any-return]


def history(
    list_fn: Callable[..., Any], since: str, until: Callable[[Obj], bool], *args: Any, **kwargs: Any
) -> list[Obj]:
    """Every version the API server's watch replays from resourceVersion ``since``, up to the first
    that satisfies ``until``."""
    seen: list[Obj] = []
    deadline = time.monotonic() + WAIT_S
    while (remaining := deadline - time.monotonic()) > 0:
        stream = watch.Watch().stream(
            list_fn,
            *args,
            resource_version=since,
            timeout_seconds=max(1, math.ceil(remaining)),
            deserialize=False,
            **kwargs,
        )
        for event in stream:
            obj = event["object"]
            since = obj["metadata"]["resourceVersion"]
            seen.append(obj)
            if until(obj):
                return seen
    raise TimeoutError(f"no version satisfied the condition; saw {len(seen)}")


def pod_history(
    core: client.CoreV1Api, namespace: str, since: str, until: Callable[[Obj], bool]
) -> list[Obj]:
    return history(core.list_namespaced_pod, since, until, namespace)


def database_history(
    custom: client.CustomObjectsApi, db: Database, since: str, until: Callable[[Obj], bool]
) -> list[Obj]:
    return history(
        custom.list_namespaced_custom_object,
        since,
        until,
        GROUP,
        VERSION,
        db.namespace,
        PLURAL,
        field_selector=f"metadata.name={db.name}",
    )


def every_one_labelled(names: list[str]) -> Callable[[Obj], bool]:
    """A history stop condition: each of these pods has been seen with a role label."""
    labelled: set[str] = set()

    def until(obj: Obj) -> bool:
        if labels(obj).get(ROLE):
            labelled.add(obj["metadata"]["name"])
        return labelled >= set(names)

    return until


def pods_version(core: client.CoreV1Api, namespace: str) -> str:
    return str(
        json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["metadata"][
            "resourceVersion"
        ]
    )


def phase_sequence(custom: client.CustomObjectsApi, db: Database, since: str) -> list[str]:
    """The database's phases after resourceVersion ``since`` until it is Ready after not being
    Ready (repeats collapsed)."""
    phases: list[str] = []

    def until(obj: Obj) -> bool:
        current = (obj.get("status") or {}).get("phase", "")
        if not phases or phases[-1] != current:
            phases.append(current)
        return current == "Ready" and len(phases) > 1

    database_history(custom, db, since, until)
    return phases


def patch_conditions(custom: client.CustomObjectsApi, db: Database, conditions: list[Obj]) -> None:
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"status": {"conditions": conditions}}
    )


def condition(type_: str, status: str, reason: str = "Paused", message: str = "by a test") -> Obj:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2020-01-01T00:00:00Z",
    }


def conditions_of(db: Database) -> list[Obj]:
    return list((db.get().get("status") or {}).get("conditions") or [])


def petset_secret(custom: client.CustomObjectsApi, db: Database) -> str:
    petset = custom.get_namespaced_custom_object(
        PETSET_GROUP, PETSET_VERSION, db.namespace, PETSET_PLURAL, db.name
    )
    mssql = next(c for c in petset["spec"]["template"]["spec"]["containers"] if c["name"] == "mssql")
    return str(
        next(e for e in mssql["env"] if e["name"] == "MSSQL_SA_PASSWORD")["valueFrom"]["secretKeyRef"]["name"]
    )


def move_auth_secret(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, db: Database, name: str
) -> None:
    """Point spec.authSecret.name at a new secret (what a rotation with a user secret does)."""
    core.create_namespaced_secret(
        db.namespace,
        {"metadata": {"name": name}, "stringData": {"username": "sa", "password": new_password()}},
    )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, db.namespace, PLURAL, db.name, {"spec": {"authSecret": {"name": name}}}
    )


def pdb_status(sandbox: Sandbox, namespace: str, name: str) -> Obj:
    """The PDB's status once the disruption controller has seen its current spec."""
    current = sandbox.read_pdb(namespace, name)
    if current is None:
        return {}
    status: Obj = current.get("status") or {}
    if status.get("observedGeneration") != current["metadata"]["generation"]:
        return {}
    return status


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def settings(sandbox: Sandbox) -> Iterator[Settings]:
    """The session sandbox's settings, to flip at runtime; put back after the test."""
    saved = dataclasses.replace(sandbox.settings)
    yield sandbox.settings
    for field in dataclasses.fields(Settings):
        setattr(sandbox.settings, field.name, getattr(saved, field.name))


@pytest.fixture(scope="module")
def shared_namespace(sandbox: Sandbox) -> str:
    name = f"f-{uuid.uuid4().hex[:8]}"
    sandbox.ensure_namespace(name)
    return name


@pytest.fixture(scope="module")
def ag3(sandbox: Sandbox, shared_namespace: str) -> Database:
    """A three-replica Availability Group the tests using it only read."""
    return sandbox.create_database(shared_namespace, "ag3", replicas=3)


@pytest.fixture(scope="module")
def solo(sandbox: Sandbox, shared_namespace: str) -> Database:
    """A standalone database the tests using it only read."""
    return sandbox.create_database(shared_namespace, "solo", replicas=1)


@pytest.fixture(scope="module")
def ipv6_sandbox() -> Iterator[Sandbox]:
    with Sandbox(Settings(ip_family="ipv6")) as running:
        yield running


# -- 1. a new address per restart ------------------------------------------------------------------
def test_every_start_of_a_pod_gets_a_new_ip_while_its_sql_instance_follows_the_pod_name(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    original, changed = new_password(), new_password()
    db = sandbox.create_database(namespace, "db", replicas=1, password=original)
    before = pod(core, namespace, "db-0")
    old_ip = before["status"]["podIP"]
    assert old_ip == db.ip("db-0") and db.port("db-0") == 1433
    alter_sa_password(db, "db-0", original, changed)
    core.patch_namespaced_secret("db-auth", namespace, {"stringData": {"password": changed}})

    core.delete_namespaced_pod("db-0", namespace)

    sandbox.wait_for(restarted_and_ready(core, db, "db-0", before["metadata"]["uid"]), "db-0 restarted")
    after = pod(core, namespace, "db-0")
    assert after["status"]["podIP"] == db.ip("db-0") != old_ip
    assert after["status"]["podIPs"] == [{"ip": db.ip("db-0")}]
    assert logs_in(db, "db-0", changed), "the instance's volume (with its ALTER LOGIN) follows the pod name"
    assert refuses_connections(old_ip, 1433)


def test_with_new_ip_per_restart_off_a_restarted_pod_keeps_its_ip(
    sandbox: Sandbox, settings: Settings, core: client.CoreV1Api, namespace: str
) -> None:
    settings.new_ip_per_restart = False
    db = sandbox.create_database(namespace, "db", replicas=1)
    before = pod(core, namespace, "db-0")

    core.delete_namespaced_pod("db-0", namespace)

    sandbox.wait_for(restarted_and_ready(core, db, "db-0", before["metadata"]["uid"]), "db-0 restarted")
    assert pod(core, namespace, "db-0")["status"]["podIP"] == before["status"]["podIP"] == db.ip("db-0")


# -- 2. IPv6 ---------------------------------------------------------------------------------------
def declared_port(obj: Obj) -> int:
    mssql = next(c for c in obj["spec"]["containers"] if c["name"] == "mssql")
    return int(next(p for p in mssql["ports"] if p["name"] == "db")["containerPort"])


def test_in_ipv6_mode_every_pod_listens_on_ipv6_loopback_on_the_port_its_spec_declares(
    ipv6_sandbox: Sandbox,
) -> None:
    password = new_password()
    db = ipv6_sandbox.create_database(f"v6-{uuid.uuid4().hex[:6]}", "v6", replicas=3, password=password)
    core = ipv6_sandbox.core

    pods = {name: pod(core, db.namespace, name) for name in db.pods}

    for name, obj in pods.items():
        assert obj["status"]["podIP"] == db.ip(name) == "::1"
        assert obj["status"]["podIPs"] == [{"ip": "::1"}]
        assert declared_port(obj) == db.port(name)
        assert logs_in(db, name, password), name
        assert not logs_in(db, name, password + "x"), name
    assert len({declared_port(obj) for obj in pods.values()}) == 3
    assert roles(core, db) == {"v6-0": "primary", "v6-1": "secondary", "v6-2": "secondary"}


def test_in_ipv6_mode_a_restarted_pod_declares_a_new_port_where_its_instance_answers(
    ipv6_sandbox: Sandbox,
) -> None:
    password = new_password()
    db = ipv6_sandbox.create_database(f"v6-{uuid.uuid4().hex[:6]}", "v6", replicas=1, password=password)
    core = ipv6_sandbox.core
    before = pod(core, db.namespace, "v6-0")

    core.delete_namespaced_pod("v6-0", db.namespace)

    ipv6_sandbox.wait_for(restarted_and_ready(core, db, "v6-0", before["metadata"]["uid"]), "v6-0 restarted")
    after = pod(core, db.namespace, "v6-0")
    assert declared_port(after) == db.port("v6-0") != declared_port(before)
    assert logs_in(db, "v6-0", password)
    assert refuses_connections("::1", declared_port(before))


def test_in_ipv6_mode_a_pods_certificate_names_its_ipv6_address_and_verifies_through_a_freetds_section(
    ipv6_sandbox: Sandbox, tmp_path: Path
) -> None:
    password = new_password()
    db = ipv6_sandbox.create_database(f"v6-{uuid.uuid4().hex[:6]}", "v6", replicas=1, password=password)
    secret = ipv6_sandbox.core.read_namespaced_secret("v6-server-cert", db.namespace)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(base64.b64decode(secret.data["ca.crt"]))
    certificate = db.instance("v6-0").certificate
    assert certificate is not None
    name = f"v6-0.v6-pods.{db.namespace}.svc"
    assert certificate.subject_alt_names() == ([name, f"{name}.cluster.local"], ["::1"])
    port = db.port("v6-0")
    verify = {"host": "::1", "port": str(port), "ca file": str(ca_file)}
    conf = freetds_conf(tmp_path, {"by-name": {**verify, "certificate hostname": name}, "by-ip": verify})

    # A section takes the bare IPv6 address as host and pymssql's port= (measured): unlike a server
    # given without a section, which needs "[::1]:N" (tests/support.py::server_args).
    assert pymssql_attempt(conf, "by-name", port, password, encryption="require") is None
    assert pymssql_attempt(conf, "by-ip", port, password, encryption="require") is None
    assert [login.encrypted for login in db.instance("v6-0").logins] == [True, True]


# -- 3. roles from the coordinator -----------------------------------------------------------------
def test_replicas_start_without_a_role_and_the_coordinator_makes_ordinal_0_primary_at_bootstrap(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str
) -> None:
    since = pods_version(core, namespace)
    password = new_password()

    db = sandbox.create_database(namespace, "db", replicas=3, password=password)

    assert phase(db) == "Ready"
    assert roles(core, db) == {"db-0": "primary", "db-1": "secondary", "db-2": "secondary"}
    first: dict[str, Obj] = {}
    for version in pod_history(core, namespace, since, every_one_labelled(db.pods)):
        first.setdefault(version["metadata"]["name"], version)
    assert {name: labels(first[name]).get(ROLE) for name in db.pods} == dict.fromkeys(db.pods)
    assert next((e.name, e.detail) for e in db.timeline() if e.kind == "role-changed") == (
        "db-0",
        "role=primary",
    )
    template = custom.get_namespaced_custom_object(
        PETSET_GROUP, PETSET_VERSION, namespace, PETSET_PLURAL, "db"
    )
    assert ROLE not in template["spec"]["template"]["metadata"]["labels"]
    assert {name: sql_role(db, name, password) for name in db.pods} == {
        "db-0": "PRIMARY",
        "db-1": "SECONDARY",
        "db-2": "SECONDARY",
    }


def test_when_the_primary_goes_every_role_is_blank_for_a_while_then_the_lowest_ready_replica_leads(
    sandbox: Sandbox,
    settings: Settings,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    settings.role_election_delay = 1.0  # long enough to look at the blank window from here
    password = new_password()
    db = sandbox.create_database(namespace, "db", replicas=3, password=password)
    since = db.get()["metadata"]["resourceVersion"]
    old_primary = pod(core, namespace, "db-0")["metadata"]["uid"]

    core.delete_namespaced_pod("db-0", namespace)

    sandbox.wait_for(
        lambda: roles(core, db)["db-1"] is None and roles(core, db)["db-2"] is None, "blank roles"
    )
    assert {name: sql_role(db, name, password) for name in ("db-1", "db-2")} == {
        "db-1": "RESOLVING",
        "db-2": "RESOLVING",
    }
    sandbox.wait_for(lambda: phase(db) == "NotReady", "the database to be NotReady without a primary")
    sandbox.wait_for(lambda: roles(core, db)["db-1"] == "primary", "db-1 elected")
    sandbox.wait_for(restarted_and_ready(core, db, "db-0", old_primary), "db-0 back")
    # The coordinator labels each pod in turn: db-0 may be back before db-2 has its label again.
    settled = {"db-0": "secondary", "db-1": "primary", "db-2": "secondary"}
    sandbox.wait_for(lambda: roles(core, db) == settled, f"roles {settled}")
    assert {name: sql_role(db, name, password) for name in db.pods} == {
        "db-0": "SECONDARY",
        "db-1": "PRIMARY",
        "db-2": "SECONDARY",
    }
    phases = phase_sequence(custom, db, since)
    assert (phases[0], phases[-1]) == ("NotReady", "Ready"), phases  # Critical may come between


def test_a_replica_that_is_not_ready_is_passed_over_when_the_next_primary_is_elected(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=3)
    db.instance("db-1").set_login("sa", new_password(), sysadmin=True)  # db-1 fails its readiness probe
    sandbox.wait_for(lambda: not is_ready(pod(core, namespace, "db-1")), "db-1 NotReady")

    core.delete_namespaced_pod("db-0", namespace)

    # The coordinator labels one pod at a time: wait for the whole outcome, not for its first label.
    settled = {"db-1": "secondary", "db-2": "primary"}
    sandbox.wait_for(
        lambda: {k: v for k, v in roles(core, db).items() if k != "db-0"} == settled, f"roles {settled}"
    )


def test_failover_moves_the_primary_to_the_chosen_pod_through_a_blank_window_without_restarts(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    password = new_password()
    db = sandbox.create_database(namespace, "db", replicas=3, password=password)
    since = pods_version(core, namespace)

    sandbox.failover(namespace, "db", "db-2")

    assert roles(core, db) == {"db-0": "secondary", "db-1": "secondary", "db-2": "primary"}
    versions = pod_history(core, namespace, since, lambda p: labels(p).get(ROLE) == "primary")
    first_blank = next(i for i, v in enumerate(versions) if ROLE not in labels(v))
    window = versions[first_blank:]
    assert {v["metadata"]["name"] for v in window if ROLE not in labels(v)} == set(db.pods)
    assert [v["metadata"]["name"] for v in window if labels(v).get(ROLE) == "primary"] == ["db-2"]
    assert sql_role(db, "db-2", password) == "PRIMARY"
    assert sql_role(db, "db-0", password) == "SECONDARY"
    assert [e for e in db.timeline() if e.kind == "pod-terminating"] == []
    sandbox.wait_for(lambda: phase(db) == "Ready", "Ready after the switchover")


def test_failover_promotes_a_running_replica_even_while_it_is_not_ready(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=3)
    db.instance("db-1").set_login("sa", new_password(), sysadmin=True)  # as after ALTER LOGIN
    sandbox.wait_for(lambda: not is_ready(pod(core, namespace, "db-1")), "db-1 NotReady")

    sandbox.failover(namespace, "db", "db-1")

    assert roles(core, db) == {"db-0": "secondary", "db-1": "primary", "db-2": "secondary"}
    assert db.instance("db-1").role == "PRIMARY"


def test_each_pod_terminating_entry_names_the_role_the_pod_had_when_its_deletion_began(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=3)
    for name in ("db-1", "db-0"):
        uid = pod(core, namespace, name)["metadata"]["uid"]
        core.delete_namespaced_pod(name, namespace)
        sandbox.wait_for(restarted_and_ready(core, db, name, uid), f"{name} back")

    terminating = [(e.name, e.detail) for e in db.timeline() if e.kind == "pod-terminating"]

    assert terminating == [("db-1", "role=secondary"), ("db-0", "role=primary")]


def test_a_standalone_has_no_coordinator_container_and_no_role_label(
    core: client.CoreV1Api, solo: Database
) -> None:
    obj = pod(core, solo.namespace, "solo-0")

    assert ROLE not in labels(obj)
    assert [c["name"] for c in obj["spec"]["containers"]] == ["mssql"]
    assert [e for e in solo.timeline() if e.kind == "role-changed" and e.name.startswith("solo")] == []


# -- 4. the pause handshake and the health checker -------------------------------------------------
def test_the_provisioner_acknowledges_a_paused_condition_of_status_unknown_by_turning_it_true(
    sandbox: Sandbox, custom: client.CustomObjectsApi, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    asked = condition("Paused", "Unknown", message="MSSQLServerOpsRequest rotate is in process")

    patch_conditions(custom, db, [asked])

    sandbox.wait_for(lambda: conditions_of(db)[0]["status"] == "True", "the pause acknowledged")
    [acknowledged] = conditions_of(db)
    assert (acknowledged["reason"], acknowledged["message"]) == (asked["reason"], asked["message"])
    assert acknowledged["lastTransitionTime"] != asked["lastTransitionTime"]


def test_with_the_pause_handshake_off_an_unknown_pause_is_neither_acknowledged_nor_honoured(
    sandbox: Sandbox,
    settings: Settings,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    settings.pause_handshake = False
    db = sandbox.create_database(namespace, "db", replicas=1)
    patch_conditions(custom, db, [condition("Paused", "Unknown")])

    move_auth_secret(core, custom, db, "moved-auth")

    sandbox.wait_for(lambda: petset_secret(custom, db) == "moved-auth", "the PetSet to follow (not paused)")
    sandbox.settle()
    assert [c["status"] for c in conditions_of(db)] == ["Unknown"]


def test_while_paused_the_petset_is_left_alone_but_the_phase_keeps_following_the_pods(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    patch_conditions(custom, db, [condition("Paused", "True")])
    move_auth_secret(core, custom, db, "moved-auth")
    original = db.instance("db-0").password_of("sa")
    assert original is not None

    db.instance("db-0").set_login("sa", new_password(), sysadmin=True)  # the pod fails its probe

    sandbox.wait_for(lambda: phase(db) == "NotReady", "the phase to follow the pod while paused")
    db.instance("db-0").set_login("sa", original, sysadmin=True)
    sandbox.wait_for(lambda: phase(db) == "Ready", "Ready again while paused")
    assert petset_secret(custom, db) == "db-auth"
    assert [c["status"] for c in conditions_of(db) if c["type"] == "Paused"] == ["True"]


# -- 5. the ops webhook resumes databases ----------------------------------------------------------
def test_the_ops_request_crd_has_a_status_subresource_and_kubedbs_printer_columns(sandbox: Sandbox) -> None:
    crd = client.ApiextensionsV1Api(sandbox.api).read_custom_resource_definition(OPS_CRD)
    [version] = crd.spec.versions

    assert version.name == "v1alpha1"
    assert version.subresources.status == {}
    assert [(c.name, c.json_path) for c in version.additional_printer_columns] == [
        ("Type", ".spec.type"),
        ("Status", ".status.phase"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_when_any_ops_request_of_a_database_succeeds_every_paused_condition_is_removed(
    sandbox: Sandbox, custom: client.CustomObjectsApi, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)
    patch_conditions(
        custom,
        db,
        [
            condition("Paused", "True", message="paused by someone"),
            condition("Provisioned", "True", reason="Provisioned"),
            condition("Paused", "True", message="paused by someone else"),
        ],
    )
    name = sandbox.create_ops_request(namespace, "db", type_="Restart")
    ops = custom.get_namespaced_custom_object(
        "ops.kubedb.com", "v1alpha1", namespace, "mssqlserveropsrequests", name
    )
    assert (ops["spec"], ops["status"]) == (
        {"type": "Restart", "databaseRef": {"name": "db"}},
        {"phase": "Pending"},
    )

    sandbox.set_ops_request_phase(namespace, name, "Progressing")
    sandbox.settle()
    assert [c["type"] for c in conditions_of(db)] == ["Paused", "Provisioned", "Paused"]

    sandbox.set_ops_request_phase(namespace, name, "Successful")

    sandbox.wait_for(lambda: [c["type"] for c in conditions_of(db)] == ["Provisioned"], "the pauses removed")


def test_a_failed_ops_request_resumes_its_own_database_and_no_other(
    sandbox: Sandbox, custom: client.CustomObjectsApi, namespace: str
) -> None:
    mine = sandbox.create_database(namespace, "mine", replicas=1)
    other = sandbox.create_database(namespace, "other", replicas=1)
    for db in (mine, other):
        patch_conditions(custom, db, [condition("Paused", "True")])
    name = sandbox.create_ops_request(namespace, "mine", type_="RotateAuth")

    sandbox.set_ops_request_phase(namespace, name, "Failed")

    sandbox.wait_for(lambda: conditions_of(mine) == [], "mine resumed")
    sandbox.settle()
    assert [c["type"] for c in conditions_of(other)] == ["Paused"]


# -- 6. the arbiter --------------------------------------------------------------------------------
def test_an_even_availability_group_gets_an_arbiter_told_apart_only_by_its_name_and_owner(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=2)
    owner = db.get()
    petset = custom.get_namespaced_custom_object(
        PETSET_GROUP, PETSET_VERSION, namespace, PETSET_PLURAL, "db-arbiter"
    )
    main = custom.get_namespaced_custom_object(PETSET_GROUP, PETSET_VERSION, namespace, PETSET_PLURAL, "db")
    arbiter = pod(core, namespace, "db-arbiter-0")

    assert "arbiter" in owner["spec"]
    assert petset["spec"]["replicas"] == 1
    assert [(o["kind"], o["uid"], o["controller"]) for o in petset["metadata"]["ownerReferences"]] == [
        ("MSSQLServer", owner["metadata"]["uid"], True)
    ]
    assert petset["spec"]["selector"] == main["spec"]["selector"]
    assert labels(arbiter) == {
        **database_labels("db"),
        "apps.kubernetes.io/pod-index": "0",
        "statefulset.kubernetes.io/pod-name": "db-arbiter-0",
    }
    assert [(o["kind"], o["name"]) for o in arbiter["metadata"]["ownerReferences"]] == [
        ("PetSet", "db-arbiter")
    ]
    assert [c["name"] for c in arbiter["spec"]["containers"]] == ["mssql-coordinator"]
    assert is_ready(arbiter)
    assert refuses_connections(arbiter["status"]["podIP"], 1433), "no SQL Server runs for the arbiter"
    assert (db.pods, db.arbiter) == (["db-0", "db-1"], "db-arbiter-0")
    listed = core.list_namespaced_pod(
        namespace, label_selector=",".join(f"{k}={v}" for k, v in database_labels("db").items())
    )
    assert sorted(p.metadata.name for p in listed.items) == ["db-0", "db-1", "db-arbiter-0"]
    assert roles(core, db) == {"db-0": "primary", "db-1": "secondary"}


def test_a_deleted_arbiter_pod_is_recreated_by_its_own_petset_and_no_replica_restarts(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=2)
    uids = {name: pod(core, namespace, name)["metadata"]["uid"] for name in [*db.pods, "db-arbiter-0"]}

    core.delete_namespaced_pod("db-arbiter-0", namespace)

    sandbox.wait_for(restarted_and_ready(core, db, "db-arbiter-0", uids["db-arbiter-0"]), "the arbiter back")
    assert {name: pod(core, namespace, name)["metadata"]["uid"] for name in db.pods} == {
        name: uids[name] for name in db.pods
    }
    assert [e.name for e in db.timeline() if e.kind == "pod-terminating"] == ["db-arbiter-0"]
    assert phase(db) == "Ready"


def test_odd_availability_groups_and_standalones_have_no_arbiter(
    custom: client.CustomObjectsApi, ag3: Database, solo: Database
) -> None:
    for db in (ag3, solo):
        assert "arbiter" not in db.get()["spec"]
        assert db.arbiter is None
        with pytest.raises(ApiException) as missing:
            custom.get_namespaced_custom_object(
                PETSET_GROUP, PETSET_VERSION, db.namespace, PETSET_PLURAL, f"{db.name}-arbiter"
            )
        assert missing.value.status == 404


# -- 7. standalone and AG shapes -------------------------------------------------------------------
def services_of(core: client.CoreV1Api, db: Database) -> dict[str, Any]:
    listed = core.list_namespaced_service(db.namespace).items
    return {s.metadata.name: s for s in listed if s.metadata.labels["app.kubernetes.io/instance"] == db.name}


def test_an_availability_group_gets_primary_governing_stats_and_secondary_services(
    core: client.CoreV1Api, ag3: Database
) -> None:
    services = services_of(core, ag3)

    assert set(services) == {"ag3", "ag3-pods", "ag3-stats", "ag3-secondary"}
    assert services["ag3"].spec.selector[ROLE] == "primary"
    assert services["ag3-secondary"].spec.selector[ROLE] == "secondary"
    assert services["ag3-pods"].spec.cluster_ip == "None"
    assert ag3.get()["spec"]["topology"]["mode"] == "AvailabilityGroup"


def test_a_standalone_gets_primary_governing_and_stats_services_and_no_topology(
    core: client.CoreV1Api, solo: Database
) -> None:
    services = services_of(core, solo)

    assert set(services) == {"solo", "solo-pods", "solo-stats"}
    assert ROLE not in services["solo"].spec.selector
    assert "topology" not in solo.get()["spec"]


# -- 8. the auth secret ----------------------------------------------------------------------------
def test_the_generated_auth_secret_is_labelled_owned_by_the_database_and_stamped_with_its_activation(
    core: client.CoreV1Api, ag3: Database
) -> None:
    owner = ag3.get()
    secret = core.read_namespaced_secret("ag3-auth", ag3.namespace)

    assert secret.type == "kubernetes.io/basic-auth"
    assert secret.metadata.labels == database_labels("ag3")
    assert [(o.kind, o.name, o.uid, o.controller) for o in secret.metadata.owner_references] == [
        ("MSSQLServer", "ag3", owner["metadata"]["uid"], True)
    ]
    active_from = secret.metadata.annotations["kubedb.com/auth-active-from"]
    assert dt.datetime.strptime(active_from, "%Y-%m-%dT%H:%M:%SZ")
    assert owner["spec"]["authSecret"]["activeFrom"] == active_from


def test_a_user_brought_opaque_auth_secret_has_no_owner_and_its_password_logs_in(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    password = new_password()

    db = sandbox.create_database(namespace, "db", replicas=1, password=password, auth_secret_type="Opaque")

    secret = core.read_namespaced_secret("db-auth", namespace)
    assert secret.type == "Opaque"
    assert not secret.metadata.owner_references
    assert (
        secret.metadata.annotations["kubedb.com/auth-active-from"]
        == db.get()["spec"]["authSecret"]["activeFrom"]
    )
    assert logs_in(db, "db-0", password)


def test_a_test_can_create_a_user_secret_of_type_opaque(core: client.CoreV1Api, solo: Database) -> None:
    create_basic_auth_secret(solo, "opaque-user", "sa", new_password(), secret_type="Opaque")

    secret = core.read_namespaced_secret("opaque-user", solo.namespace)
    assert (secret.type, sorted(secret.data)) == ("Opaque", ["password", "username"])


# -- 9. PodDisruptionBudgets -----------------------------------------------------------------------
def test_a_pdb_with_max_unavailable_1_lets_one_eviction_through_and_refuses_the_next_until_the_pod_is_back(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=3, pdb={"maxUnavailable": 1})
    sandbox.wait_for(
        lambda: pdb_status(sandbox, namespace, "db").get("disruptionsAllowed") == 1, "the PDB computed"
    )
    status = pdb_status(sandbox, namespace, "db")
    assert (status["expectedPods"], status["currentHealthy"], status["desiredHealthy"]) == (3, 3, 2)
    uid = pod(core, namespace, "db-2")["metadata"]["uid"]

    evict(core, namespace, "db-2")
    refused = refusal(core, namespace, "db-1")

    assert refused["reason"] == "TooManyRequests"
    [cause] = refused["details"]["causes"]
    assert cause["reason"] == "DisruptionBudget" and cause["message"].startswith("The disruption budget db ")
    assert not pod(core, namespace, "db-1")["metadata"].get("deletionTimestamp")
    sandbox.wait_for(restarted_and_ready(core, db, "db-2", uid), "db-2 back")
    sandbox.wait_for(
        lambda: pdb_status(sandbox, namespace, "db").get("disruptionsAllowed") == 1, "budget back"
    )
    evict(core, namespace, "db-1")


def test_a_pdb_with_min_available_equal_to_the_replicas_refuses_every_eviction_until_it_is_relaxed(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    sandbox.create_database(namespace, "db", replicas=3, pdb={"minAvailable": 3})
    sandbox.wait_for(
        lambda: pdb_status(sandbox, namespace, "db").get("currentHealthy") == 3, "the PDB computed"
    )
    assert pdb_status(sandbox, namespace, "db")["disruptionsAllowed"] == 0

    for name in ("db-0", "db-1", "db-2"):
        assert (
            "The disruption budget db " in refusal(core, namespace, name)["details"]["causes"][0]["message"]
        )

    sandbox.set_pdb(namespace, "db", {"maxUnavailable": 1})
    sandbox.wait_for(lambda: pdb_status(sandbox, namespace, "db").get("disruptionsAllowed") == 1, "relaxed")
    relaxed = sandbox.read_pdb(namespace, "db")
    assert relaxed is not None and "minAvailable" not in relaxed["spec"]
    evict(core, namespace, "db-2")

    sandbox.set_pdb(namespace, "db", None)
    assert sandbox.read_pdb(namespace, "db") is None
    evict(core, namespace, "db-1")  # db-2 may still be away: without a budget nothing is counted


def test_an_arbiter_counts_in_the_pdb_over_its_database_labels(sandbox: Sandbox, namespace: str) -> None:
    sandbox.create_database(namespace, "db", replicas=2, pdb={"maxUnavailable": 1})

    sandbox.wait_for(
        lambda: pdb_status(sandbox, namespace, "db").get("currentHealthy") == 3, "the PDB computed"
    )
    status = pdb_status(sandbox, namespace, "db")
    assert (status["expectedPods"], status["desiredHealthy"], status["disruptionsAllowed"]) == (3, 2, 1)


# -- 10. readiness and the password ----------------------------------------------------------------
def test_after_alter_login_every_pod_not_yet_restarted_turns_not_ready_and_a_pdb_refuses_every_eviction(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    original, changed = new_password(), new_password()
    db = sandbox.create_database(namespace, "db", replicas=3, password=original, pdb={"maxUnavailable": 1})

    for name in db.pods:
        alter_sa_password(db, name, original, changed)

    sandbox.wait_for(
        lambda: not any(is_ready(pod(core, namespace, n)) for n in db.pods), "every pod NotReady"
    )
    sandbox.wait_for(
        lambda: pdb_status(sandbox, namespace, "db").get("currentHealthy") == 0, "no healthy pod"
    )
    # The provisioner follows the pods through its own watch: Critical (some not Ready) may come first.
    sandbox.wait_for(lambda: phase(db) == "NotReady", "the database NotReady")
    for name in db.pods:
        refusal(core, namespace, name)


def test_with_readiness_not_following_the_password_running_pods_stay_ready_after_alter_login(
    sandbox: Sandbox, settings: Settings, core: client.CoreV1Api, namespace: str
) -> None:
    original, changed = new_password(), new_password()
    db = sandbox.create_database(namespace, "db", replicas=3, password=original, pdb={"maxUnavailable": 1})
    settings.readiness_follows_password = False

    for name in db.pods:
        alter_sa_password(db, name, original, changed)

    with pytest.raises(TimeoutError):
        sandbox.wait_for(
            lambda: not all(is_ready(pod(core, namespace, n)) for n in db.pods), "a pod NotReady", STAYS_S
        )
    assert phase(db) == "Ready"
    sandbox.wait_for(
        lambda: pdb_status(sandbox, namespace, "db").get("disruptionsAllowed") == 1, "the budget"
    )
    evict(core, namespace, "db-2")


def test_turning_readiness_away_from_the_password_at_runtime_makes_not_ready_pods_ready(
    sandbox: Sandbox, settings: Settings, core: client.CoreV1Api, namespace: str
) -> None:
    original, changed = new_password(), new_password()
    db = sandbox.create_database(namespace, "db", replicas=1, password=original)
    alter_sa_password(db, "db-0", original, changed)
    sandbox.wait_for(lambda: not is_ready(pod(core, namespace, "db-0")), "db-0 NotReady")

    settings.readiness_follows_password = False

    sandbox.wait_for(lambda: is_ready(pod(core, namespace, "db-0")), "db-0 Ready by the next probe")
    sandbox.wait_for(lambda: phase(db) == "Ready", "the database Ready")
