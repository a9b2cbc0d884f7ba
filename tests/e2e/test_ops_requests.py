"""``kubectl apply`` of KubeDB's MSSQLServerOpsRequest, carried out by the bridge (python -m
rotation.bridge) through a real Prefect server and worker, against the sandbox's real API server.

Each test starts its own bridge process(es); the flow runs are the worker's, in the session's stack.
Status, conditions, Events and annotations are read back from the API server, the runs from Prefect's
REST API (filtered by the request's idempotency key: one run per request attempt)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from rotation import constants as c
from rotation.ops_request import (
    ATTEMPT_ANNOTATION,
    EXECUTOR_ANNOTATION,
    FINALIZER,
    RUN_ANNOTATION,
    RUN_URL_ANNOTATION,
    WAITING_ANNOTATION,
)
from sandbox.cluster import Database, Sandbox
from sandbox.prefect_stack import PROJECT_DIR, PrefectStack
from tests.e2e.conftest import DatabaseFactory
from tests.e2e.test_rbac import create, load, one
from tests.fault_matrix import proves
from tests.support import assert_rotated, is_paused

BRIDGE_YAML = PROJECT_DIR / "deployments" / "bridge.yaml"
BRIDGE_ALL_YAML = PROJECT_DIR / "deployments" / "bridge-all.yaml"
EXAMPLE = PROJECT_DIR / "deployments" / "examples" / "rotate-auth.yaml"
REQUEST_TIMEOUT_S = 150.0
Json = dict[str, Any]


# -- fixtures ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningBridge:
    proc: subprocess.Popen[bytes]
    log: Path


StartBridge = Callable[..., RunningBridge]


@pytest.fixture
def bridges(stack: PrefectStack, sandbox: Sandbox) -> Iterator[StartBridge]:
    """Start bridges (``python -m rotation.bridge ARGS``); every one still running is stopped after."""
    started: list[RunningBridge] = []

    def start(*args: str, kubeconfig: Path | None = None) -> RunningBridge:
        name = f"bridge-{uuid.uuid4().hex[:6]}"
        # Runs are looked at every second rather than every 2 (the default), and Prefect or an API
        # server that was away is tried again after at most 2 s rather than 30: these only set how
        # soon a change is noticed, and the suite's time.
        quick = ("--poll-seconds", "1", "--backoff-max-seconds", "2")
        proc = stack.start_bridge(kubeconfig or sandbox.kubeconfig, *quick, *args, name=name)
        started.append(RunningBridge(proc, stack.home / f"{name}.log"))
        return started[-1]

    yield start
    for bridge in started:
        stack.stop_process(bridge.proc)


@pytest.fixture(scope="module")
def bridge_kubeconfig(sandbox: Sandbox) -> Path:
    """deployments/bridge.yaml applied as-is; a token kubeconfig for its ServiceAccount."""
    docs = load(BRIDGE_YAML)
    for doc in docs:
        if doc["kind"] not in ("ConfigMap", "Deployment"):
            create(sandbox.api, doc)
    account = one(docs, "ServiceAccount")["metadata"]
    path = sandbox.service_account_kubeconfig(account["namespace"], account["name"])
    with config.new_client_from_config(str(path)) as api:
        custom = client.CustomObjectsApi(api)

        def granted() -> bool:  # the ClusterRole and its binding must have reached the authorizer
            try:
                custom.list_cluster_custom_object(c.OPS_GROUP, c.OPS_VERSION, c.OPS_PLURAL, limit=1)
                return True
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False

        sandbox.wait_for(granted, "the bridge's ClusterRole to be in force")
    return path


# -- helpers -----------------------------------------------------------------------------------------
def apply(
    db: Database, *, name: str | None = None, annotated: bool = True, database: str | None = None, **spec: Any
) -> Json:
    """Create a RotateAuth request for the database (``spec`` adds or overrides fields)."""
    body = {
        "apiVersion": f"{c.OPS_GROUP}/{c.OPS_VERSION}",
        "kind": "MSSQLServerOpsRequest",
        "metadata": {
            "name": name or f"rotate-{uuid.uuid4().hex[:6]}",
            "annotations": {EXECUTOR_ANNOTATION: "prefect"} if annotated else {},
        },
        "spec": {"type": "RotateAuth", "databaseRef": {"name": database or db.name}, **spec},
    }
    return db.sandbox.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
        c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL, body
    )


def read(db: Database, name: str) -> Json | None:
    try:
        return db.sandbox.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def phase(obj: Json | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase") or "")


def wait_request(
    db: Database,
    name: str,
    holds: Callable[[Json | None], bool],
    what: str,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Json | None:
    found: list[Json | None] = []

    def check() -> bool:
        found[:] = [read(db, name)]
        return holds(found[0])

    db.sandbox.wait_for(check, f"request {db.namespace}/{name}: {what}", timeout)
    return found[0]


def wait_phase(db: Database, name: str, *phases: str, timeout: float = REQUEST_TIMEOUT_S) -> Json:
    obj = wait_request(db, name, lambda o: phase(o) in phases, f"phase {'/'.join(phases)}", timeout)
    assert obj is not None
    return obj


def delete(db: Database, name: str) -> None:
    db.sandbox.custom.delete_namespaced_custom_object(
        c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL, name
    )


def runs_of(stack: PrefectStack, request: Json) -> list[Json]:
    """Every flow run started for the request, any attempt (their idempotency keys name its UID)."""
    uid = request["metadata"]["uid"]
    runs = stack.api(
        "POST", "/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["mssqlserveropsrequest"]}}}
    )
    return [r for r in runs if (r.get("idempotency_key") or "").startswith(f"mssqlserveropsrequest/{uid}")]


def events_on(db: Database, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events on the request, oldest first."""
    events = db.sandbox.core.list_namespaced_event(
        db.namespace, field_selector=f"involvedObject.kind=MSSQLServerOpsRequest,involvedObject.name={name}"
    ).items
    events.sort(key=lambda e: int(e.metadata.resource_version))  # the order they were written
    return [(e.type, e.reason, e.message) for e in events]


def condition_types(obj: Json) -> list[str]:
    return [cond["type"] for cond in (obj.get("status") or {}).get("conditions") or []]


class PhaseRecorder:
    """Every phase a request goes through, as a watch from before its creation delivers them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.phases: dict[str, list[str]] = {}
        self._stop = threading.Event()
        listing = db.sandbox.custom.list_namespaced_custom_object(
            c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL
        )
        self._version = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in watch.Watch().stream(
                self.db.sandbox.custom.list_namespaced_custom_object,
                c.OPS_GROUP,
                c.OPS_VERSION,
                self.db.namespace,
                c.OPS_PLURAL,
                resource_version=self._version,
                timeout_seconds=1,
            ):
                obj = event["object"]
                self._version = obj["metadata"]["resourceVersion"]
                seen = self.phases.setdefault(obj["metadata"]["name"], [])
                if phase(obj) and (not seen or seen[-1] != phase(obj)):
                    seen.append(phase(obj))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def accepted(obj: Json | None) -> bool:
    """The bridge took it (finalizer, attempt annotation) before asking Prefect for a run."""
    return obj is not None and ATTEMPT_ANNOTATION in (obj["metadata"].get("annotations") or {})


def released(obj: Json | None) -> bool:
    return obj is not None and FINALIZER not in (obj["metadata"].get("finalizers") or [])


def has_run(obj: Json | None) -> bool:
    return obj is not None and RUN_ANNOTATION in (obj["metadata"].get("annotations") or {})


def kubectl(sandbox: Sandbox, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)}
    result = subprocess.run(
        ["kubectl", *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


# -- the whole path ----------------------------------------------------------------------------------
def test_an_applied_request_is_carried_out_by_one_run_its_status_written_as_kubedb_writes_it(
    stack: PrefectStack,
    sandbox: Sandbox,
    make_database: DatabaseFactory,
    bridges: StartBridge,
    bridge_kubeconfig: Path,
) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    bridges(kubeconfig=bridge_kubeconfig)  # deployments/bridge.yaml's identity, nothing more
    recorder = PhaseRecorder(db)
    try:
        request = apply(db, timeout="5m", apply="IfReady")
        name = request["metadata"]["name"]
        wait_phase(db, name, "Successful", "Failed")
        done = wait_request(db, name, released, "the bridge's finalizer removed")
    finally:
        recorder.stop()
    assert done is not None

    assert phase(done) == "Successful", done.get("status")
    assert recorder.phases[name] == ["Pending", "Progressing", "Successful"]
    status = done["status"]
    assert status["observedGeneration"] == request["metadata"]["generation"]
    per_pod = [
        f"{step}--{pod}" for pod in sorted(db.pods) for step in ("GetPod", "EvictPod", "CheckPodRunning")
    ]
    types = condition_types(done)
    assert types[:4] == ["RotateAuth", "DatabasePauseSucceeded", "UpdateCredential", "UpdatePetSets"]
    waits = ["SecretPropagated", "SecondariesSynchronized"]  # before the primary's restart
    assert sorted(types[4:-2]) == sorted(per_pod + waits) and types[-2:] == ["RestartNodes", "Successful"]
    assert all(cond["status"] == "True" and cond["observedGeneration"] == 1 for cond in status["conditions"])
    # One run, found by the request's UID, with the request's spec as parameters (names, no secret).
    [run] = runs_of(stack, request)
    assert run["idempotency_key"] == f"mssqlserveropsrequest/{request['metadata']['uid']}"
    assert run["state_type"] == "COMPLETED"
    assert run["parameters"] == {
        "namespace": db.namespace,
        "database": db.name,
        "auth_secret": None,
        "timeout": "5m",
        "apply": "IfReady",
        "ops_request": name,
    }
    notes = done["metadata"]["annotations"]
    assert notes[RUN_ANNOTATION] == run["id"] and notes[ATTEMPT_ANNOTATION] == "1"
    assert notes[RUN_URL_ANNOTATION] == f"{stack.ui_url}/runs/flow-run/{run['id']}"
    assert_rotated(db, original)
    # kubectl shows it as KubeDB's CRD prints it; describe has the Events.
    table = kubectl(sandbox, "get", "mssqlserveropsrequests", "-n", db.namespace)
    assert table.split()[:4] == ["NAME", "TYPE", "STATUS", "AGE"]
    assert table.splitlines()[1].split()[:3] == [name, "RotateAuth", "Successful"]
    last = ("Normal", "Successful", "Successfully rotated the credentials")  # written after the status
    sandbox.wait_for(lambda: last in events_on(db, name), "the Successful Event")
    reasons = [reason for _, reason, _ in events_on(db, name)]
    assert reasons[:2] == ["Pending", "Started"] and reasons[-1] == "Successful"
    assert {"DatabasePauseSucceeded", "UpdateCredential", "RestartNodes"} <= set(reasons)


def test_the_shipped_example_applied_with_kubectl_is_carried_out(
    stack: PrefectStack, sandbox: Sandbox, bridges: StartBridge, tmp_path: Path
) -> None:
    # The example as shipped, but in a namespace of its own: another test module of the same worker
    # (test_rbac.py) has its own demo/mssql-demo.
    namespace = f"example-{uuid.uuid4().hex[:6]}"
    text = EXAMPLE.read_text().replace("namespace: demo\n", f"namespace: {namespace}\n")
    assert text != EXAMPLE.read_text(), "the example names its namespace as 'namespace: demo'"
    (applied := tmp_path / EXAMPLE.name).write_text(text)
    example = load(applied)[0]
    db = sandbox.create_database(namespace, example["spec"]["databaseRef"]["name"], replicas=1)
    original = db.secret_data()["password"]
    bridges()

    kubectl(sandbox, "apply", "-f", str(applied))

    done = wait_phase(db, example["metadata"]["name"], "Successful", "Failed")
    assert phase(done) == "Successful", done.get("status")
    assert_rotated(db, original)
    assert len(runs_of(stack, done)) == 1


# -- refused at once ---------------------------------------------------------------------------------
@proves(
    fault=(
        "an MSSQLServerOpsRequest with a malformed timeout, an unknown apply, or a database that does "
        "not exist"
    ),
    where="kubectl apply, picked up by the bridge",
    outcome=(
        "Failed at once with the reason in its Failed condition and a Warning Event; no flow run; "
        "nothing changed"
    ),
)
@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"timeout": "soon"}, "spec.timeout 'soon' is not a duration such as 5m"),
        ({"apply": "Sometimes"}, "spec.apply 'Sometimes' must be IfReady or Always"),
        ({"database": "no-such-db"}, "does not exist"),
    ],
)
def test_an_invalid_request_goes_failed_at_once_with_the_reason_and_no_run(
    stack: PrefectStack,
    make_database: DatabaseFactory,
    bridges: StartBridge,
    spec: Json,
    reason: str,
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    bridges()

    request = apply(db, **spec)
    done = wait_phase(db, request["metadata"]["name"], "Failed", "Successful", timeout=60)

    assert phase(done) == "Failed"
    [failed] = [cond for cond in done["status"]["conditions"] if cond["type"] == "Failed"]
    assert reason in failed["message"] and failed["status"] == "True"
    assert runs_of(stack, request) == []
    event = ("Warning", "Failed", failed["message"])  # written right after the status
    db.sandbox.wait_for(lambda: event in events_on(db, request["metadata"]["name"]), "the Failed Event")
    assert db.secret_data()["password"] == original and not is_paused(db)
    assert FINALIZER not in (done["metadata"].get("finalizers") or [])


@proves(
    fault="every run of a request fails (its user secret does not exist), with spec.maxRetries 0 and 1",
    where="the flow run started by the bridge",
    outcome=(
        "one run per attempt (1 and 2), a Retrying Event between them, then Failed naming the last "
        "attempt and the cause"
    ),
)
def test_spec_max_retries_is_honoured_with_one_run_per_attempt(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db, other = make_database(replicas=1), make_database(replicas=1)  # two databases: run side by side
    bridges()
    secret_ref = {"secretRef": {"kind": "Secret", "name": "no-such-secret"}}  # every attempt fails

    once = apply(db, authentication=secret_ref, maxRetries=0)
    twice = apply(other, authentication=secret_ref, maxRetries=1)

    for target, request, attempts in ((db, once, 1), (other, twice, 2)):
        done = wait_phase(target, request["metadata"]["name"], "Failed", "Successful")
        assert phase(done) == "Failed"
        runs = runs_of(stack, request)
        assert len(runs) == attempts and all(r["state_type"] == "FAILED" for r in runs)
        assert f"(attempt {attempts} of {attempts})" in done["status"]["conditions"][-1]["message"]
        assert "no-such-secret" in done["status"]["conditions"][-1]["message"]
    reasons = [reason for _, reason, _ in events_on(other, twice["metadata"]["name"])]
    assert reasons.count("Started") == 2 and reasons.count("Retrying") == 1


def test_a_request_not_annotated_is_untouched_without_all(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db = make_database(replicas=1)
    bridges()
    plain = apply(db, annotated=False)
    # Applied after it: once the bridge has failed this one, it has seen the first one too.
    marker = apply(db, database="no-such-db")
    wait_phase(db, marker["metadata"]["name"], "Failed")

    now = read(db, plain["metadata"]["name"])
    assert now is not None and now.get("status") is None
    assert now["metadata"].get("annotations") in (None, {}) and not now["metadata"].get("finalizers")
    assert runs_of(stack, plain) == []
    assert events_on(db, plain["metadata"]["name"]) == []


# -- exactly once ------------------------------------------------------------------------------------
@proves(
    fault="two bridges watching the same request",
    where="two python -m rotation.bridge processes",
    outcome="one flow run (idempotency key = the request UID); request Successful; secret rotated",
)
def test_two_bridges_start_one_run(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    bridges()
    bridges()

    request = apply(db)
    done = wait_phase(db, request["metadata"]["name"], "Successful", "Failed")

    assert phase(done) == "Successful"
    assert len(runs_of(stack, request)) == 1
    assert_rotated(db, original)


@proves(
    fault="SIGKILL of the bridge while the request's run is running; a new bridge started",
    where="the bridge process",
    outcome=(
        "the same run (no second Started Event) carries on; the new bridge writes Successful; secret rotated"
    ),
)
def test_a_bridge_killed_mid_run_and_restarted_finishes_the_request_with_the_same_run(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    first = bridges()
    request = apply(db)
    name = request["metadata"]["name"]
    wait_request(db, name, has_run, "a run")

    stack.stop_process(first.proc, signal.SIGKILL)
    bridges()
    done = wait_phase(db, name, "Successful", "Failed")

    assert phase(done) == "Successful"
    [run] = runs_of(stack, request)
    assert done["metadata"]["annotations"][RUN_ANNOTATION] == run["id"]
    assert [reason for _, reason, _ in events_on(db, name)].count("Started") == 1
    assert_rotated(db, original)


# -- one request per database at a time; deletion ------------------------------------------------
@proves(
    fault="three requests for one database, the second deleted while it waits",
    where="kubectl apply / delete, bridge queue",
    outcome=(
        "the second waits (annotation waiting-for) and never runs; first and third each one run, Successful"
    ),
)
def test_a_second_request_waits_for_the_first_and_one_deleted_while_pending_never_runs(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db = make_database(replicas=1)
    bridges()
    first = apply(db)
    first_name = first["metadata"]["name"]
    wait_request(db, first_name, has_run, "a run")
    second = apply(db)
    # Two writes, annotation then status: wait for both.
    wait_request(
        db,
        second["metadata"]["name"],
        lambda o: (
            phase(o) == "Pending"
            and ((o or {})["metadata"].get("annotations") or {}).get(WAITING_ANNOTATION) == first_name
        ),
        "Pending, waiting for the first",
    )

    delete(db, second["metadata"]["name"])
    third = apply(db)  # after the deleted one: it runs only once the bridge is past the second
    wait_phase(db, first_name, "Successful")
    done = wait_phase(db, third["metadata"]["name"], "Successful", "Failed")

    assert phase(done) == "Successful"
    assert read(db, second["metadata"]["name"]) is None
    assert runs_of(stack, second) == []
    assert len(runs_of(stack, first)) == 1 and len(runs_of(stack, third)) == 1


@proves(
    fault="a request deleted while its run waits at an eviction (after Commit)",
    where="kubectl delete of the MSSQLServerOpsRequest",
    outcome=(
        "the run is Cancelled; the flow's finally resumes the database and frees the lock; the finalizer "
        "then lets the request go"
    ),
)
def test_a_running_request_deleted_has_its_run_cancelled_and_the_database_resumed(
    stack: PrefectStack,
    sandbox: Sandbox,
    make_database: DatabaseFactory,
    bridges: StartBridge,
) -> None:
    db = make_database(replicas=1)
    sandbox.set_pdb(db.namespace, db.name, {"minAvailable": 1})  # the run waits at its first eviction
    bridges()
    request = apply(db)
    name = request["metadata"]["name"]
    wait_request(db, name, lambda o: "UpdatePetSets" in condition_types(o or {}), "credentials committed")
    assert is_paused(db)

    delete(db, name)
    wait_request(db, name, lambda o: o is None, "the request gone", timeout=REQUEST_TIMEOUT_S)

    [run] = runs_of(stack, request)
    assert run["state_type"] == "CANCELLED", run["state"]
    assert not is_paused(db), "the flow's finally must resume the database"
    assert sandbox.coordination_leases(db.namespace) == []


# -- outages ---------------------------------------------------------------------------------------
@proves(
    fault="Prefect's server stopped while requests are applied, one of them deleted meanwhile",
    where="the Prefect API server",
    outcome=(
        "requests accepted (Pending) and held; when the server is back, the kept one runs once and "
        "succeeds, the deleted one never runs and is let go"
    ),
)
def test_requests_seen_while_prefect_is_down_are_started_when_it_is_back(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db, other = make_database(replicas=1), make_database(replicas=1)
    original = db.secret_data()["password"]
    bridge = bridges()
    stack.stop_server()
    try:
        kept, dropped = apply(db), apply(other)
        for target, request in ((db, kept), (other, dropped)):
            wait_request(target, request["metadata"]["name"], accepted, "accepted while Prefect is down")
        # Deleted while Pending: held (finalizer) until Prefect can say that no run was started.
        delete(other, dropped["metadata"]["name"])
        assert read(other, dropped["metadata"]["name"]) is not None
    finally:
        stack.start_server()
        stack.revive_worker()

    done = wait_phase(db, kept["metadata"]["name"], "Successful", "Failed")
    assert phase(done) == "Successful"
    wait_request(other, dropped["metadata"]["name"], lambda o: o is None, "the deleted request let go")
    assert len(runs_of(stack, kept)) == 1 and runs_of(stack, dropped) == []
    assert_rotated(db, original)
    assert "Prefect could not start a run" in bridge.log.read_text()


@proves(
    fault="three 410 Gone watch answers, then every connection severed and four requests dropped",
    where="Kubernetes API proxy between the bridge and the API server",
    outcome=(
        "the bridge lists again after each 410 and reconnects; a request applied then runs once and succeeds"
    ),
)
def test_the_bridge_outlives_api_server_restarts_and_expired_watches(
    stack: PrefectStack,
    sandbox: Sandbox,
    make_database: DatabaseFactory,
    bridges: StartBridge,
    tmp_path: Path,
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    proxy = sandbox.fault_proxy()
    try:
        kubeconfig = proxy.kubeconfig(tmp_path / "kubeconfig", sandbox.control_plane.admin_token)
        ops_path = f"/apis/{c.OPS_GROUP}/{c.OPS_VERSION}/{c.OPS_PLURAL}$"
        proxy.add_fault("GET", ops_path, query_regex="watch=", times=3, status=410, body_reason="Expired")
        bridges(kubeconfig=kubeconfig)
        # list, watch (410), list, watch (410), list, watch (410), list, watch
        sandbox.wait_for(lambda: proxy.hits("GET", ops_path) >= 8, "the bridge to list again after each 410")
        # A restart: every connection cut, then the API server unreachable for a few requests.
        proxy.add_fault("*", "/", times=4, drop=True)
        proxy.sever()
        request = apply(db)
        done = wait_phase(db, request["metadata"]["name"], "Successful", "Failed")
    finally:
        proxy.stop()

    assert phase(done) == "Successful"
    assert len(runs_of(stack, request)) == 1
    assert_rotated(db, original)


# -- KubeDB's ops-manager, and --all ---------------------------------------------------------------------
OPS_VALIDATOR = "v1alpha1.validators.ops.kubedb.com"  # the APIService KubeDB's webhook server registers


@contextlib.contextmanager
def ops_manager_apiservice(sandbox: Sandbox) -> Iterator[None]:
    """KubeDB's ops webhooks as the API server sees them: the APIService, registered (here served
    locally, nothing behind it), removed afterwards."""
    registration = client.ApiregistrationV1Api(sandbox.api)
    registration.create_api_service(
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": OPS_VALIDATOR},
            "spec": {
                "group": "validators.ops.kubedb.com",
                "version": "v1alpha1",
                "groupPriorityMinimum": 10000,
                "versionPriority": 15,
            },
        }
    )
    try:
        yield
    finally:
        registration.delete_api_service(OPS_VALIDATOR)


@proves(
    fault="the bridge is started (without --all) on a cluster where KubeDB's ops-manager runs",
    where="the cluster: KubeDB's ops webhook APIService registered",
    outcome="it refuses to start (exit 2) naming the evidence, the double execution it would cause, what "
    "to do instead and the override; started with --allow-with-kubedb-ops-manager it warns and carries "
    "out an annotated request",
)
def test_the_bridge_refuses_to_start_next_to_kubedbs_ops_manager_unless_told_to_take_the_risk(
    stack: PrefectStack, sandbox: Sandbox, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    with ops_manager_apiservice(sandbox):
        refused = bridges("--namespace", db.namespace)
        assert refused.proc.wait(timeout=60) == 2
        said = refused.log.read_text()
        assert f"KubeDB's ops-manager is installed (APIService {OPS_VALIDATOR})" in said
        assert "the requests annotated mssql-auth-rotation/executor: prefect would run twice" in said
        assert "'From kubectl'" in said and "--allow-with-kubedb-ops-manager" in said

        allowed = bridges("--namespace", db.namespace, "--allow-with-kubedb-ops-manager")
        request = apply(db)
        done = wait_phase(db, request["metadata"]["name"], "Successful", "Failed")

    assert allowed.proc.poll() is None
    assert "starting anyway (--allow-with-kubedb-ops-manager)" in allowed.log.read_text()
    assert phase(done) == "Successful"
    assert_rotated(db, original)


def test_all_takes_unannotated_requests_and_is_refused_where_kubedbs_ops_manager_runs(
    stack: PrefectStack,
    sandbox: Sandbox,
    make_database: DatabaseFactory,
    bridges: StartBridge,
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    bridges("--all", "--namespace", db.namespace)
    request = apply(db, annotated=False)
    done = wait_phase(db, request["metadata"]["name"], "Successful", "Failed")
    assert phase(done) == "Successful"
    assert_rotated(db, original)

    ops_manager = {
        "metadata": {
            "name": "kubedb-ops-manager-0",
            "labels": {"app.kubernetes.io/name": "kubedb-ops-manager"},
        },
        "spec": {"containers": [{"name": "operator", "image": "ghcr.io/kubedb/kubedb-ops-manager"}]},
    }
    sandbox.core.create_namespaced_pod(db.namespace, ops_manager)
    try:
        refused = bridges("--all", "--namespace", db.namespace)
        assert refused.proc.wait(timeout=60) == 2
    finally:
        sandbox.core.delete_namespaced_pod("kubedb-ops-manager-0", db.namespace, grace_period_seconds=0)
    said = refused.log.read_text()
    assert f"KubeDB's ops-manager is installed (pod {db.namespace}/kubedb-ops-manager-0)" in said
    assert "every RotateAuth request would run twice" in said


def test_only_all_lists_pods_in_every_namespace(
    stack: PrefectStack, sandbox: Sandbox, bridges: StartBridge, tmp_path: Path
) -> None:
    """Without --all the bridge looks for the ops-manager by its APIServices alone (get by name);
    the cluster-wide list of pods is asked for only by --all (deployments/bridge-all.yaml grants it)."""
    proxy = sandbox.fault_proxy()
    try:
        kubeconfig = proxy.kubeconfig(tmp_path / "kubeconfig", sandbox.control_plane.admin_token)
        ops_path = f"/apis/{c.OPS_GROUP}/{c.OPS_VERSION}/{c.OPS_PLURAL}$"
        seen: dict[str, tuple[int, int]] = {}
        for mode in ((), ("--all",)):
            before = proxy.hits("GET", ops_path)
            bridge = bridges(*mode, kubeconfig=kubeconfig)
            sandbox.wait_for(
                lambda before=before: proxy.hits("GET", ops_path) > before,
                "the bridge to list requests",
            )
            seen[" ".join(mode) or "annotated"] = (
                proxy.hits("GET", "^/api/v1/pods$"),
                proxy.hits("GET", f"^/apis/apiregistration.k8s.io/v1/apiservices/{OPS_VALIDATOR}$"),
            )
            stack.stop_process(bridge.proc)
    finally:
        proxy.stop()

    assert seen["annotated"] == (0, 1)
    assert seen["--all"] == (1, 2)


# -- deployments/bridge.yaml ---------------------------------------------------------------------------
def test_the_bridge_manifests_are_accepted_and_its_identity_reaches_no_secret_or_database(
    sandbox: Sandbox, make_database: DatabaseFactory, bridge_kubeconfig: Path
) -> None:
    docs = load(BRIDGE_YAML)
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Deployment"):
            create(sandbox.api, doc, dry_run=True)  # server-side validation, nothing stored
    for doc in load(BRIDGE_ALL_YAML):  # only for --all: not applied here
        create(sandbox.api, doc, dry_run=True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    [container] = pod["containers"]
    assert container["args"][:3] == ["python", "-m", "rotation.bridge"] and "--all" not in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    db = make_database(replicas=1)
    with config.new_client_from_config(str(bridge_kubeconfig)) as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        refused: list[Callable[[], object]] = [
            lambda: core.read_namespaced_secret(f"{db.name}-auth", db.namespace),
            lambda: core.list_namespaced_secret(db.namespace),
            lambda: custom.patch_namespaced_custom_object(
                c.DB_GROUP,
                c.DB_VERSION,
                db.namespace,
                c.DB_PLURAL,
                db.name,
                {"metadata": {"labels": {"x": "y"}}},
            ),
            lambda: core.delete_namespaced_pod(db.pods[0], db.namespace),
            lambda: core.list_pod_for_all_namespaces(limit=1),  # only bridge-all.yaml grants it
            lambda: core.list_namespaced_pod(db.namespace, limit=1),
            lambda: custom.create_namespaced_custom_object(
                c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL, {"metadata": {"name": "x"}}
            ),
        ]
        for attempt in refused:
            with pytest.raises(ApiException) as denied:
                attempt()
            assert denied.value.status == 403


@proves(
    fault="every run of a request crashes before the flow starts: its deployment's working directory "
    "does not exist (prefect deploy from the wrong folder)",
    where="the flow-run process a process worker starts for the bridge's run (the pull step)",
    outcome="the request ends Failed naming where the run died (the pull step and its folder), not "
    "only 'Process exited with status code: 1'; no secret in it",
)
def test_a_crashed_run_fails_the_request_with_the_crashs_cause(
    stack: PrefectStack, make_database: DatabaseFactory, bridges: StartBridge
) -> None:
    db = make_database(replicas=1)
    password = db.secret_data()["password"]
    manual = next(d for d in stack.api("POST", "/deployments/filter", {}) if d["name"] == "manual")
    missing = f"/nonexistent/checkout-{uuid.uuid4().hex[:6]}"
    broken = stack.api(
        "POST",
        "/deployments/",
        {
            "name": f"wrong-folder-{uuid.uuid4().hex[:6]}",
            "flow_id": manual["flow_id"],
            "entrypoint": manual["entrypoint"],
            "work_pool_name": manual["work_pool_name"],
            "work_queue_name": "default",
            "parameter_openapi_schema": manual["parameter_openapi_schema"],
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": missing}}],
        },
    )
    try:
        bridges("--deployment", f"rotate-mssql-auth/{broken['name']}")

        request = apply(db, maxRetries=0)
        done = wait_phase(db, request["metadata"]["name"], "Failed", "Successful")
    finally:
        stack.api("DELETE", f"/deployments/{broken['id']}")

    [run] = runs_of(stack, request)
    assert run["state_type"] == "CRASHED"
    [failed] = [cond for cond in done["status"]["conditions"] if cond["type"] == "Failed"]
    message = failed["message"]
    assert message.startswith(run["state"]["message"].rstrip(". ")), message
    assert f"; it died in its deployment's pull step set_working_directory (directory: {missing})" in message
    assert message.endswith("(attempt 1 of 1)") and "Traceback" not in message
    assert password not in message
    assert db.secret_data()["password"] == password and not is_paused(db)
