"""rotation/rbac.py, the per-database grant: exactly the API calls of rotation/kube.py, every rule that
can name its objects named, and YAML that says the same as the dicts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from rotation import constants as c
from rotation import rbac
from rotation.plan import lock_name

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "rotation" / "kube.py"
NS, DB = "demo", "mssql-demo"
Triple = tuple[str, str, str]  # (API group, resource, verb)

# What a client method name says about the request: verb by prefix, resource by what follows.
VERBS = {"read": "get", "get": "get", "list": "list", "create": "create", "replace": "update"}
VERBS |= {"patch": "patch", "delete": "delete"}
CORE_RESOURCES = {
    "secret": "secrets",
    "pod": "pods",
    "pod_eviction": "pods/eviction",
    "event": "events",
    "lease": "leases",
    "deployment": "deployments",
    "stateful_set": "statefulsets",
    "daemon_set": "daemonsets",
}
# self.<api>; custom: the group constant
APIS = {"core": "", "coordination": "coordination.k8s.io", "apps": "apps"}


def _api_method(node: ast.expr) -> tuple[str, str] | None:
    """``self.core.read_namespaced_secret`` -> ("core", "read_namespaced_secret")."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
        and node.value.attr in (*APIS, "custom")
    ):
        return node.value.attr, node.attr
    return None


def _constants(call: ast.Call) -> dict[str, str]:
    """The ``c.*_GROUP`` and ``c.*_PLURAL`` constants among a call's arguments, by suffix."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.Tuple(elts=list(call.args), ctx=ast.Load())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "c":
            for suffix in ("GROUP", "PLURAL"):
                if node.attr.endswith(f"_{suffix}"):
                    found[suffix] = str(getattr(c, node.attr))
    return found


# A request the client has no class for, sent with Kube._get_json(path): a GET of a whole
# ``/apis/<group>/<version>/namespaces/<namespace>/<resource>``, i.e. a list.
_RAW_PATH = re.compile(r"/apis/(?P<group>[a-z0-9.]+)/[^/]+/namespaces/[^/]+/(?P<resource>[a-z]+)$")


def _raw_calls(call: ast.Call) -> set[Triple]:
    args = list(call.args)
    for index, arg in enumerate(args[:-1]):
        if isinstance(arg, ast.Attribute) and arg.attr == "_get_json":
            path = args[index + 1]
            text = path.value if isinstance(path, ast.Constant) else ast.unparse(path)[2:-1]
            match = _RAW_PATH.search(str(text))
            assert match, f"teach this test {ast.unparse(call)}"
            return {(match["group"], match["resource"], "list")}
    return set()


def _chosen_methods(tree: ast.AST) -> set[tuple[str, str]]:
    """API methods a verb picks from a dict by kind (``{WorkloadKind.DEPLOYMENT:
    self.apps.patch_namespaced_deployment, ...}[kind]``), then calls."""
    return {
        method
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for method in map(_api_method, node.values)
        if method is not None
    }


def kube_calls() -> set[Triple]:
    """Every (group, resource, verb) that rotation/kube.py sends, read from its source."""
    calls: set[Triple] = set()
    tree = ast.parse(KUBE.read_text())
    for api, method in _chosen_methods(tree):
        prefix, _, rest = method.partition("_namespaced_")
        assert prefix in VERBS and rest in CORE_RESOURCES, f"rotation/kube.py picks {method}: teach this test"
        calls.add((APIS[api], CORE_RESOURCES[rest], VERBS[prefix]))
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        methods = [m for m in map(_api_method, [call.func, *call.args]) if m is not None]
        watches = isinstance(call.func, ast.Attribute) and call.func.attr == "_watch_until"
        calls |= _raw_calls(call)
        for api, method in methods:
            prefix, _, rest = method.partition("_namespaced_")
            assert prefix in VERBS and rest, f"rotation/kube.py calls {method}: teach this test its verb"
            verb = VERBS[prefix]
            if api == "custom":
                constants = _constants(call)
                group, resource = constants["GROUP"], constants["PLURAL"]
                resource += "/status" if rest == "custom_object_status" else ""
            else:
                assert rest in CORE_RESOURCES, f"rotation/kube.py calls {method}: which resource is it?"
                group, resource = APIS[api], CORE_RESOURCES[rest]
            calls.add((group, resource, verb))
            if watches:  # _watch_until lists, then watches with the same function
                calls.add((group, resource, "watch"))
    return calls


def granted(g: rbac.Grant) -> dict[Triple, set[str] | None]:
    """(group, resource, verb) -> the names it is granted for; None: any object of the namespace."""
    out: dict[Triple, set[str] | None] = {}
    for rule in g.rules:
        for resource in rule.resources:
            for verb in rule.verbs:
                key = (rule.group, resource, verb)
                assert key not in out, f"{key} granted twice"
                out[key] = set(rule.names) or None
    return out


@pytest.fixture
def example() -> rbac.Grant:
    return rbac.grant(NS, DB, 3, user_secrets=["mssql-demo-new-auth"])


# -- what is granted ---------------------------------------------------------------------------------
OPS_REQUEST_CALLS = {(c.OPS_GROUP, c.OPS_PLURAL, "get"), (c.OPS_GROUP, f"{c.OPS_PLURAL}/status", "patch")}
# kube.py can create the Lease (for an admin identity, the sandbox), but the grant creates it instead:
# a create cannot be limited by name, and would let a squatter pre-create another database's lock.
LEASE_CREATE = ("coordination.k8s.io", "leases", "create")
# Restarting a workload after a rotation: granted only by name, with --restart-workload.
WORKLOAD_KINDS = ("deployments", "statefulsets", "daemonsets")
WORKLOAD_PATCHES = {("apps", kind, "patch") for kind in WORKLOAD_KINDS}
EVERY_KIND = ["deployment/app", "statefulset/db-client", "daemonset/agent"]


def test_the_grant_is_exactly_the_api_calls_of_kube_py(example: rbac.Grant) -> None:
    calls = kube_calls()

    assert len(calls) >= 15, calls  # the parser found the adapter's verbs
    assert LEASE_CREATE in calls and calls >= WORKLOAD_PATCHES
    assert set(granted(example)) == calls - OPS_REQUEST_CALLS - WORKLOAD_PATCHES - {LEASE_CREATE}
    with_all = rbac.grant(
        NS, DB, 3, user_secrets=["mssql-demo-new-auth"], ops_requests=True, restart_workloads=EVERY_KIND
    )
    assert set(granted(with_all)) == calls - {LEASE_CREATE}


def test_the_ops_request_status_is_granted_only_when_asked() -> None:
    with_ops = rbac.grant(NS, DB, 3, ops_requests=True)
    assert set(granted(with_ops)) >= OPS_REQUEST_CALLS
    assert not OPS_REQUEST_CALLS & set(granted(rbac.grant(NS, DB, 3)))
    assert with_ops.command.endswith("--ops-requests")


# The writes that could change a pod template (a pod mounting any Secret, running as any ServiceAccount).
POD_TEMPLATE_WRITES = {(c.DB_GROUP, c.DB_PLURAL, "patch"), (c.PETSET_GROUP, c.PETSET_PLURAL, "update")}


def test_without_a_user_secret_the_database_and_its_petset_are_only_read() -> None:
    generated = rbac.grant(NS, DB, 3)
    names = granted(generated)

    assert not POD_TEMPLATE_WRITES & set(names)
    not_granted = OPS_REQUEST_CALLS | POD_TEMPLATE_WRITES | WORKLOAD_PATCHES | {LEASE_CREATE}
    assert set(names) == kube_calls() - not_granted
    assert names[(c.DB_GROUP, c.DB_PLURAL, "get")] == names[(c.PETSET_GROUP, c.PETSET_PLURAL, "get")] == {DB}
    assert names[(c.DB_GROUP, f"{c.DB_PLURAL}/status", "patch")] == {DB}  # the pause
    assert "validating-admission-policy.yaml" not in " ".join(r.why for r in generated.rules)


def test_a_user_secret_adds_the_switch_writes_by_name_saying_what_they_allow(example: rbac.Grant) -> None:
    names = granted(example)

    for key in POD_TEMPLATE_WRITES:
        assert names[key] == {DB}, key
    switch = [r for r in example.rules if set(r.verbs) & {"patch", "update"} and r.group != ""]
    switch = [r for r in switch if r.resources[0] in (c.DB_PLURAL, c.PETSET_PLURAL)]
    assert len(switch) == 2
    for rule in switch:
        assert rule.why.startswith("Only with --user-secret")
        assert "pod template" in rule.why and "deployments/validating-admission-policy.yaml" in rule.why


def test_only_what_cannot_be_named_is_granted_namespace_wide(example: rbac.Grant) -> None:
    unscoped = {key for key, names in granted(example).items() if names is None}

    assert unscoped == {
        (c.DB_GROUP, c.DB_PLURAL, "list"),  # every MSSQLServer of the namespace (a user secret's users)
        (c.OPS_GROUP, c.OPS_PLURAL, "list"),
        ("", "pods", "list"),  # by label selector
        ("", "pods", "watch"),
        ("", "events", "create"),  # generateName
        ("policy", "poddisruptionbudgets", "list"),  # before the eviction fallback deletes a pod
        *(("apps", kind, "list") for kind in WORKLOAD_KINDS),  # the reloader annotation, found after
    }
    for rule in example.rules:
        if not rule.names:
            assert "Not by name" in rule.why, rule  # the comment says why


def test_named_objects_are_derived_from_the_database(example: rbac.Grant) -> None:
    names = granted(example)
    pods = {f"{DB}-0", f"{DB}-1", f"{DB}-2"}

    for verb in ("get", "patch", "watch"):
        assert names[(c.DB_GROUP, c.DB_PLURAL, verb)] == {DB}
    assert names[(c.DB_GROUP, f"{c.DB_PLURAL}/status", "patch")] == {DB}
    assert names[(c.PETSET_GROUP, c.PETSET_PLURAL, "get")] == {DB}
    assert names[(c.PETSET_GROUP, c.PETSET_PLURAL, "update")] == {DB}
    assert names[("", "pods", "get")] == names[("", "pods", "delete")] == pods
    assert names[("", "pods/eviction", "create")] == pods
    assert {verb for (_, resource, verb) in names if resource == "leases"} == {"get", "update"}
    for verb in ("get", "update"):
        assert names[("coordination.k8s.io", "leases", verb)] == {lock_name(DB)}


def test_the_grant_creates_the_lock_with_no_holder_so_the_role_needs_no_create_on_leases(
    example: rbac.Grant,
) -> None:
    role, binding, lease = rbac.documents(example)

    assert (role["kind"], binding["kind"], lease["kind"]) == ("Role", "RoleBinding", "Lease")
    assert lease["apiVersion"] == "coordination.k8s.io/v1"
    assert (lease["metadata"]["name"], lease["metadata"]["namespace"]) == (lock_name(DB), NS)
    # No spec at all: `kubectl apply` of the grant again must not clear a running rotation's holder.
    assert "spec" not in lease
    assert LEASE_CREATE not in granted(example)


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_the_pods_are_the_replicas_and_no_more(replicas: int) -> None:
    names = granted(rbac.grant(NS, DB, replicas))

    assert names[("", "pods", "delete")] == {f"{DB}-{n}" for n in range(replicas)}
    assert names[("", "pods/eviction", "create")] == {f"{DB}-{n}" for n in range(replicas)}


def test_secrets_auth_and_user_secrets_are_read_and_written_tls_secrets_only_read(
    example: rbac.Grant,
) -> None:
    names = granted(example)

    assert names[("", "secrets", "get")] == {f"{DB}-auth", f"{DB}-new-auth", f"{DB}-server-cert"}
    assert names[("", "secrets", "update")] == {f"{DB}-auth", f"{DB}-new-auth"}
    assert {verb for (_, resource, verb) in names if resource == "secrets"} == {"get", "update"}


def test_tls_secrets_replace_the_default_and_names_are_listed_once() -> None:
    g = rbac.grant(NS, DB, 1, user_secrets=["a", "b", "a", f"{DB}-auth"], tls_secrets=["ca-bundle", "ca2"])
    names = granted(g)

    assert g.user_secrets == ("a", "b")
    assert names[("", "secrets", "update")] == {f"{DB}-auth", "a", "b"}
    assert names[("", "secrets", "get")] == {f"{DB}-auth", "a", "b", "ca-bundle", "ca2"}
    assert "--tls-secret ca-bundle --tls-secret ca2" in g.command


def test_the_role_and_binding_are_in_the_database_namespace_for_the_service_account() -> None:
    g = rbac.grant(NS, DB, 3, service_account="rotator", service_account_namespace="ops")
    role, binding, _ = rbac.documents(g)

    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    for doc in (role, binding):
        assert doc["metadata"]["name"] == f"mssql-auth-rotation-{DB}"
        assert doc["metadata"]["namespace"] == NS
        assert doc["metadata"]["annotations"][rbac.ANNOTATION_REPLICAS] == "3"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rotator", "namespace": "ops"}]
    assert g.command.endswith("--service-account rotator --service-account-namespace ops")


def test_every_rule_names_the_steps_that_need_it(example: rbac.Grant) -> None:
    tasks = set(
        re.findall(r'@task\(name="([a-z-]+)"', "".join(p.read_text() for p in (ROOT / "tasks").glob("*.py")))
    )

    assert len(tasks) > 10
    for rule in example.rules:
        assert any(task in rule.why for task in tasks), rule


# -- workloads restarted after a rotation (--restart-workload) ---------------------------------------
def test_the_workloads_are_always_listed_and_patched_only_by_name_kind_by_kind() -> None:
    g = rbac.grant(NS, DB, 3, restart_workloads=["deployment/app", "Deployment/web", "sts/db-client"])
    names = granted(g)

    for kind in WORKLOAD_KINDS:
        assert names[("apps", kind, "list")] is None  # the annotation: a list names no object
    # One rule per kind: resourceNames apply to every resource of a rule, so "db-client" is not a
    # Deployment name here.
    assert names[("apps", "deployments", "patch")] == {"app", "web"}
    assert names[("apps", "statefulsets", "patch")] == {"db-client"}
    assert ("apps", "daemonsets", "patch") not in names
    assert {verb for (group, _, verb) in names if group == "apps"} == {"list", "patch"}  # no get, no watch
    assert not WORKLOAD_PATCHES & set(granted(rbac.grant(NS, DB, 3)))


def test_the_restart_workloads_are_normalised_listed_once_and_in_the_command() -> None:
    g = rbac.grant(NS, DB, 1, restart_workloads=["Deploy/app", "deployments/app", "DaemonSet/agent"])

    assert [str(w) for w in g.restart_workloads] == ["deployment/app", "daemonset/agent"]
    assert g.command.endswith("--restart-workload deployment/app --restart-workload daemonset/agent")


def test_the_patch_rules_and_the_header_say_what_the_grant_allows_and_what_it_does_not() -> None:
    g = rbac.grant(NS, DB, 3, restart_workloads=["deployment/app"])
    [patch] = [rule for rule in g.rules if rule.group == "apps" and rule.verbs == ("patch",)]
    [listing] = [rule for rule in g.rules if rule.group == "apps" and rule.verbs == ("list",)]
    text = " ".join(line.removeprefix("# ") for line in rbac.render(g).splitlines())

    assert patch.why.startswith("Only with --restart-workload: restart-workloads")
    assert "kubectl.kubernetes.io/restartedAt" in patch.why and "pod template" in patch.why
    assert "secret.reloader.stakater.com/reload" in listing.why and "Not by name" in listing.why
    assert "only if this grant also names it for patch (--restart-workload)" in listing.why
    assert "only those named here with --restart-workload KIND/NAME (deployment/app;" in text
    assert "list the three kinds, read only, so that the annotation is always honoured" in text
    assert "(none is)" in " ".join(rbac.render(rbac.grant(NS, DB, 3)).split())


# -- the YAML ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("namespace", "database", "secrets"),
    [
        (NS, DB, ["mssql-demo-new-auth"]),
        ("yes", "true", ["null", "on"]),  # YAML 1.1 booleans and null, if left unquoted
        ("123", "1e3", ["0x1f", "12.5"]),  # numbers, if left unquoted
        ("a", "db.with.dots", ["s.1"]),
    ],
)
def test_the_yaml_says_what_the_dicts_say(namespace: str, database: str, secrets: list[str]) -> None:
    g = rbac.grant(namespace, database, 2, user_secrets=secrets, restart_workloads=["deployment/true"])

    assert list(yaml.safe_load_all(rbac.render(g))) == rbac.documents(g)


@pytest.mark.parametrize("workloads", [[], EVERY_KIND])
def test_every_rule_in_the_yaml_has_its_comment(workloads: list[str]) -> None:
    example = rbac.grant(NS, DB, 3, user_secrets=["mssql-demo-new-auth"], restart_workloads=workloads)
    lines = rbac.render(example).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  - apiGroups:")]

    assert len(starts) == len(example.rules)
    for i in starts:
        assert lines[i - 1].startswith("  # "), lines[i - 1]
    assert lines[1] == f"#   {example.command}"
    assert "Scaling the database (spec.replicas) means generating and applying this again" in " ".join(
        line.removeprefix("# ") for line in lines
    )


# -- refused arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"namespace": "Demo"}, "--namespace 'Demo'"),
        ({"namespace": "a" * 64}, "--namespace"),
        ({"namespace": "de.mo"}, "--namespace 'de.mo'"),
        ({"database": "mssql_demo"}, "--database 'mssql_demo'"),
        ({"database": ""}, "--database ''"),
        ({"database": "-x"}, "--database '-x'"),
        ({"database": "mssql-demo\n"}, "--database 'mssql-demo\\n'"),  # no trailing newline slips by
        ({"database": "d" * 234}, "the Role's name"),
        ({"replicas": 0}, "--replicas 0"),
        ({"replicas": 101}, "--replicas 101"),
        ({"user_secrets": ["ok", "Not-OK"]}, "--user-secret 'Not-OK'"),
        ({"tls_secrets": ["ca/bundle"]}, "--tls-secret 'ca/bundle'"),
        ({"tls_secrets": [f"{DB}-auth"]}, f"--tls-secret '{DB}-auth'"),
        ({"user_secrets": ["u"], "tls_secrets": ["u"]}, "--tls-secret 'u'"),
        ({"tls_secrets": []}, "--tls-secret"),
        ({"service_account": "Rotator"}, "--service-account 'Rotator'"),
        ({"service_account_namespace": "a.b"}, "--service-account-namespace 'a.b'"),
        ({"restart_workloads": ["job/nightly"]}, "--restart-workload 'job/nightly' is not KIND/NAME"),
        ({"restart_workloads": ["app"]}, "--restart-workload 'app' is not KIND/NAME"),
        ({"restart_workloads": ["deployment/My_App"]}, "--restart-workload 'deployment/My_App': 'My_App'"),
        ({"restart_workloads": ["deployment/"]}, "--restart-workload 'deployment/': '' is not a valid name"),
    ],
)
def test_a_bad_argument_is_refused_naming_it(arguments: dict[str, object], named: str) -> None:
    values: dict[str, object] = {"namespace": NS, "database": DB, "replicas": 3} | arguments

    with pytest.raises(rbac.InvalidName) as refused:
        rbac.grant(**values)  # type: ignore[arg-type]

    assert named in str(refused.value)
