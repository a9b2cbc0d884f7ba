"""The namespaced RBAC that the rotation of ONE database needs, built from its names (pure: no I/O);
and the in-cluster fleet's identity, which may only discover databases (``python -m rotation
rbac-fleet``) and rotates those whose grant is also bound to it (``rbac ... --fleet``).

``python -m rotation rbac`` prints it (deployments/rbac-mssql-demo.yaml is its output for the example
database). Every rule is what rotation/kube.py calls, for the step named in the rule's comment, and
every rule that can name its objects does (``resourceNames``): the MSSQLServer and PetSet ``<db>``,
the pods ``<db>-0`` ... ``<db>-(N-1)``, the Lease ``<db>-rotate-auth`` and the listed Secrets. What a
Kubernetes authorizer cannot narrow by name stays namespace-wide, and its comment says why:

- ``create`` (an Event): the new object's name is in the body, and the authorizer sees none. The one
  other object a rotation would create, its Lease, is therefore part of the output instead (created by
  whoever applies it), so the identity may not create Leases at all;
- ``list``/``watch`` by label selector, or of a whole namespace: the request names no object. (A list
  or watch with the field selector ``metadata.name=<name>`` does name it, and a 1.20 API server checks
  it against ``resourceNames``: the MSSQLServer's watch is granted by name. The pods' are not: the
  rotation also lists and watches them by KubeDB's labels.) So is the list of the namespace's
  Deployments, StatefulSets and DaemonSets, always granted (read only) so that workloads annotated
  ``secret.reloader.stakater.com/reload: <auth secret>`` can be found after a rotation; restarting one
  (a patch of its pod template) is granted only by name, with ``--restart-workload KIND/NAME``.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rotation import constants as c
from rotation.params import DNS1123_LABEL, DNS1123_SUBDOMAIN
from rotation.plan import lock_name
from rotation.workloads import RELOAD_ANNOTATION, InvalidWorkload, WorkloadKind, WorkloadRef, parse_workloads

IDENTITY: Final = "mssql-auth-rotation"  # the flow runs' ServiceAccount and its namespace (rbac.yaml)
FLEET_IDENTITY: Final = "mssql-auth-rotation-fleet"  # the in-cluster fleet's ServiceAccount (rbac-fleet.yaml)
ROLE_PREFIX: Final = "mssql-auth-rotation-"
RBAC_API_VERSION: Final = "rbac.authorization.k8s.io/v1"
LEASE_API_VERSION: Final = "coordination.k8s.io/v1"
LABELS: Final = {"app.kubernetes.io/name": "mssql-auth-rotation"}
ANNOTATION_DATABASE: Final = "mssql-auth-rotation.kubedb.com/database"
ANNOTATION_REPLICAS: Final = "mssql-auth-rotation.kubedb.com/replicas"
MAX_REPLICAS: Final = 100
MAX_NAME: Final = 253
COMMAND: Final = "python -m rotation rbac"
RESTART_OPTION: Final = "--restart-workload"
WIDTH: Final = 110


class InvalidName(ValueError):
    """An argument that cannot name a Kubernetes object (the message names the value and the option)."""


def auth_secret_name(database: str) -> str:
    """The auth Secret KubeDB creates for an MSSQLServer."""
    return f"{database}-auth"


def server_cert_name(database: str) -> str:
    """KubeDB's server certificate Secret of an MSSQLServer with spec.tls; its ca.crt is the CA."""
    return f"{database}-server-cert"


def pod_names(database: str, replicas: int) -> list[str]:
    """The PetSet's pods, as KubeDB names them (what inspect-database expects: ``<db>-<ordinal>``)."""
    return [f"{database}-{ordinal}" for ordinal in range(replicas)]


def role_name(database: str) -> str:
    return f"{ROLE_PREFIX}{database}"


@dataclass(frozen=True)
class Rule:
    """One PolicyRule, and the steps (tasks) that need it, for the YAML comment."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...] = ()  # resourceNames; empty: every object of that kind in the namespace
    why: str = ""

    def manifest(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"apiGroups": [self.group], "resources": list(self.resources)}
        if self.names:
            rule["resourceNames"] = list(self.names)
        rule["verbs"] = list(self.verbs)
        return rule


@dataclass(frozen=True)
class Grant:
    """What one database's rotations are granted, and to whom. Build it with :func:`grant`."""

    namespace: str
    database: str
    replicas: int
    user_secrets: tuple[str, ...] = ()
    tls_secrets: tuple[str, ...] = ()
    service_account: str = IDENTITY
    service_account_namespace: str = IDENTITY
    ops_requests: bool = False  # runs that carry out MSSQLServerOpsRequests (the bridge) write their status
    fleet: bool = False  # also bound to the in-cluster fleet's ServiceAccount (rbac-fleet.yaml)
    restart_workloads: tuple[WorkloadRef, ...] = ()  # rotations may restart these (patch)

    @property
    def rules(self) -> list[Rule]:
        return rules_for(self)

    @property
    def role_name(self) -> str:
        return role_name(self.database)

    @property
    def subjects(self) -> list[tuple[str, str]]:
        """The ServiceAccounts bound, as (namespace, name): the flow runs', and the fleet's with --fleet."""
        accounts = [(self.service_account_namespace, self.service_account)]
        if self.fleet:
            accounts.append((self.service_account_namespace, FLEET_IDENTITY))
        return list(dict.fromkeys(accounts))

    @property
    def writable_secrets(self) -> tuple[str, ...]:
        return (auth_secret_name(self.database), *self.user_secrets)

    @property
    def command(self) -> str:
        """The command line that prints this grant (options at their defaults left out)."""
        parts = [COMMAND, "--namespace", self.namespace, "--database", self.database]
        parts += ["--replicas", str(self.replicas)]
        for secret in self.user_secrets:
            parts += ["--user-secret", secret]
        if self.tls_secrets != (server_cert_name(self.database),):
            for secret in self.tls_secrets:
                parts += ["--tls-secret", secret]
        if self.service_account != IDENTITY:
            parts += ["--service-account", self.service_account]
        if self.service_account_namespace != IDENTITY:
            parts += ["--service-account-namespace", self.service_account_namespace]
        if self.ops_requests:
            parts.append("--ops-requests")
        if self.fleet:
            parts.append("--fleet")
        for workload in self.restart_workloads:
            parts += [RESTART_OPTION, str(workload)]
        return " ".join(parts)


# -- validation --------------------------------------------------------------------------------------
_LABEL = re.compile(DNS1123_LABEL)
_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN)


def _label(value: str, option: str) -> str:
    if len(value) > 63 or not _LABEL.fullmatch(value):
        raise InvalidName(
            f"{option} {value!r} is not a valid name: a DNS-1123 label is 1 to 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return value


def _subdomain(value: str, option: str) -> str:
    if len(value) > MAX_NAME or not _SUBDOMAIN.fullmatch(value):
        raise InvalidName(
            f"{option} {value!r} is not a valid name: a DNS-1123 subdomain is 1 to 253 lowercase "
            "letters, digits, '-' and '.', each dot-separated part starting and ending with a letter "
            "or digit"
        )
    return value


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def grant(
    namespace: str,
    database: str,
    replicas: int,
    *,
    user_secrets: Sequence[str] = (),
    tls_secrets: Sequence[str] | None = None,
    service_account: str = IDENTITY,
    service_account_namespace: str = IDENTITY,
    ops_requests: bool = False,
    fleet: bool = False,
    restart_workloads: Sequence[str] = (),
) -> Grant:
    """Validate the names and build the grant; :class:`InvalidName` names the first bad argument.

    ``tls_secrets`` None means KubeDB's ``<db>-server-cert``; passing names replaces it. ``fleet``
    also binds the Role to the fleet's ServiceAccount, ``FLEET_IDENTITY`` in
    ``service_account_namespace``, so the in-cluster fleet may rotate this database too.
    ``restart_workloads`` (``deployment/NAME``, ``statefulset/NAME``, ``daemonset/NAME``) may be
    restarted after a rotation.
    """
    _label(namespace, "--namespace")
    _subdomain(database, "--database")
    if isinstance(replicas, bool) or not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidName(f"--replicas {replicas!r} must be a whole number from 1 to {MAX_REPLICAS}")
    users = _unique(_subdomain(s, "--user-secret") for s in user_secrets)
    tls = _unique(
        _subdomain(s, "--tls-secret")
        for s in (tls_secrets if tls_secrets is not None else [server_cert_name(database)])
    )
    if not tls:
        raise InvalidName("--tls-secret: give at least one name, or leave it out for <db>-server-cert")
    _subdomain(service_account, "--service-account")
    _label(service_account_namespace, "--service-account-namespace")
    try:
        workloads = parse_workloads(restart_workloads, RESTART_OPTION)
    except InvalidWorkload as exc:
        raise InvalidName(str(exc)) from None
    auth = auth_secret_name(database)
    users = tuple(s for s in users if s != auth)  # always granted; listing it again changes nothing
    for secret in tls:
        if secret == auth or secret in users:
            raise InvalidName(
                f"--tls-secret {secret!r} is also an auth secret the rotation writes; a TLS secret is only "
                "ever read: give it once, under the option that says what it is"
            )
    derived = [
        ("the Role's name", role_name(database)),
        ("the Lease's name", lock_name(database)),
        ("the auth Secret's name", auth),
        ("the last pod's name", pod_names(database, replicas)[-1]),
    ]
    for what, name in derived:
        if len(name) > MAX_NAME:
            raise InvalidName(
                f"--database {database!r} is too long: {what} {name!r} would exceed 253 characters"
            )
    return Grant(
        namespace,
        database,
        replicas,
        users,
        tls,
        service_account,
        service_account_namespace,
        ops_requests,
        fleet,
        workloads,
    )


# -- the rules ---------------------------------------------------------------------------------------
def rules_for(g: Grant) -> list[Rule]:
    """Every rule a rotation of ``g.database`` needs, each with the steps that use it."""
    db, pods = g.database, tuple(pod_names(g.database, g.replicas))
    return [
        Rule(
            c.DB_GROUP,
            (c.DB_PLURAL,),
            ("get",),
            (db,),
            "The MSSQLServer (spec.authSecret, replicas, status, uid): inspect-database, pause-database, "
            "resume-database, set-password-on-replicas, check-before-commit, commit-secret, update-petsets "
            "and evict-pod (this run's pause still stands, alone), check-pod-running (the secret in use), "
            "record-failure and restart-workloads (the Event's object). Only read: a generated password "
            "keeps the secret's name, so its spec is never written (KubeDB copies the secret's "
            "auth-active-from into spec.authSecret.activeFrom).",
        ),
        *(_switch_rules(g) if g.user_secrets else []),
        Rule(
            c.DB_GROUP,
            (f"{c.DB_PLURAL}/status",),
            ("patch",),
            (db,),
            "pause-database and resume-database: merge-patch the status subresource to add and remove "
            "the Paused condition (what makes KubeDB's provisioner leave the database alone).",
        ),
        Rule(
            c.DB_GROUP,
            (c.DB_PLURAL,),
            ("watch",),
            (db,),
            "pause-database: watch the MSSQLServer (field selector metadata.name=<db>) until the "
            "provisioner acknowledges the pause. By name: a watch or list with that field selector "
            "names its object, and the API server checks it against resourceNames.",
        ),
        Rule(
            c.DB_GROUP,
            (c.DB_PLURAL,),
            ("list",),
            (),
            "inspect-database: list the namespace's MSSQLServers, to refuse a user secret that another "
            "database already uses (pause-database also lists <db> by field selector before watching "
            "it). Not by name: a namespace-wide list names no object (it shows the other databases' "
            "specs, which hold no credentials).",
        ),
        Rule(
            c.OPS_GROUP,
            (c.OPS_PLURAL,),
            ("list",),
            (),
            "inspect-database, and before each write (set-password-on-replicas, check-before-commit, "
            "commit-secret, update-petsets, evict-pod): refuse to start, or stop, while a KubeDB "
            "MSSQLServerOpsRequest of the database is Pending or Progressing. Not by name: the list "
            "names no object (ops requests are named by whoever creates them).",
        ),
        *(_ops_request_rules() if g.ops_requests else []),
        Rule(
            c.PETSET_GROUP,
            (c.PETSET_PLURAL,),
            ("get",),
            (db,),
            "update-petsets: read the PetSet, to check that its secretKeyRefs name the auth secret in use.",
        ),
        Rule(
            "",
            ("pods",),
            ("get", "delete"),
            pods,
            "evict-pod: read the pod (uid, deletionTimestamp) before each eviction attempt; delete it "
            "(uid precondition) only when evictions keep being throttled (429 without a disruption "
            "budget), never a pod whose eviction a PodDisruptionBudget refused. The database's replicas "
            f"only: {g.replicas} of them (--replicas).",
        ),
        Rule(
            "",
            ("pods/eviction",),
            ("create",),
            pods,
            "evict-pod: the eviction API, with the pod's uid as a precondition, which honours "
            "PodDisruptionBudgets (a refusal names the budget, so no access to budgets is needed). By "
            "name: the eviction is a subresource of the named pod.",
        ),
        Rule(
            "policy",
            ("poddisruptionbudgets",),
            ("list",),
            (),
            "evict-pod: before the fallback deletes a pod whose evictions kept being throttled without a "
            "budget naming itself, list the namespace's PodDisruptionBudgets: a pod any of them selects is "
            "never deleted. Not by name: a list names no object (budgets hold no credentials).",
        ),
        Rule(
            "",
            ("pods",),
            ("list", "watch"),
            (),
            "inspect-database, get-pod, commit-secret, check-rotation: list and watch the database's "
            "pods by KubeDB's labels (app.kubernetes.io/instance=<db>) until they all run with one "
            "primary; check-pod-running: one pod (field selector) until its replacement is Ready. Not "
            "by name: a label-selector list names no object.",
        ),
        Rule(
            "",
            ("events",),
            ("create",),
            (),
            "Events on the MSSQLServer, as KubeDB's ops-manager records them: pause-database, "
            "resume-database, commit-secret, evict-pod, check-pod-running, record-failure, "
            "restart-workloads (also on each workload it restarted). Not by name: a create names no "
            "object to the authorizer (Events are created with generateName).",
        ),
        Rule(
            "coordination.k8s.io",
            ("leases",),
            ("get", "update"),
            (lock_name(db),),
            "The rotation lock, the Lease this grant creates (below): inspect-database (get: refuse while "
            "a live run holds it), acquire-lock (get; update to take it when free or lapsed), the lock "
            "keeper (update: renew it), release-lock (get; update: clear its holder). No create: it "
            "cannot be limited by name, and would let this identity create any Lease in the namespace.",
        ),
        Rule(
            "",
            ("secrets",),
            ("get",),
            _unique((*g.writable_secrets, *g.tls_secrets)),
            "Read credentials: inspect-database (the auth secret in use; a user secret's username and "
            "password policy), stage-new-password, set-password-on-replicas, verify-logins, "
            "roll-back-password, commit-secret, update-petsets, check-pod-running, check-rotation. "
            "inspect-database: read the CA (ca.crt) that the replicas' TLS certificates are checked "
            "against, from " + ", ".join(g.tls_secrets) + " (--tls-secret; never written). Only the "
            "named secrets: list, watch and create of secrets are not granted.",
        ),
        Rule(
            "",
            ("secrets",),
            ("update",),
            g.writable_secrets,
            "Replace with the read resourceVersion: stage-new-password (.next keys), roll-back-password "
            "(remove them), commit-secret (password <- new, .prev <- old, in the secret that will hold "
            "the credentials: the auth secret or the user's), update-petsets (drop stale .next keys of "
            "the previous secret), check-rotation (remove the restart-pending mark). The auth secret "
            "and the user secrets (--user-secret) only.",
        ),
        Rule(
            "apps",
            tuple(kind.plural for kind in WorkloadKind),
            ("list",),
            (),
            "restart-workloads, after a successful rotation: find the workloads annotated "
            f"{RELOAD_ANNOTATION} naming the auth secret, so that the annotation is always honoured. "
            "Only read, and it restarts nothing by itself: an annotated workload is restarted only if "
            "this grant also names it for patch (--restart-workload), else it is reported. Not by name: a "
            "list names no object (it shows the workloads' specs: keep credentials in Secrets, not in "
            "pod templates).",
        ),
        *_restart_rules(g),
    ]


def _restart_rules(g: Grant) -> list[Rule]:
    """Patch of exactly the workloads named with --restart-workload, one rule per kind (a rule's
    resourceNames apply to all its resources)."""
    rules = []
    for kind in WorkloadKind:
        names = tuple(w.name for w in g.restart_workloads if w.kind is kind)
        if names:
            rules.append(
                Rule(
                    "apps",
                    (kind.plural,),
                    ("patch",),
                    names,
                    f"Only with --restart-workload: restart-workloads restarts these {kind.value}s after a "
                    "successful rotation, as kubectl rollout restart does (a strategic merge patch of "
                    "the pod template's kubectl.kubernetes.io/restartedAt annotation), so applications "
                    "that read the password when they start get the new one. RBAC cannot narrow a "
                    "patch to one field: this also allows changing their pod template (its image, the "
                    "Secrets it mounts, its ServiceAccount), so name only workloads whose owners "
                    "trust the rotation with them.",
                )
            )
    return rules


# What the two rules below also allow, and why they are granted only with --user-secret.
ESCALATION: Final = (
    "RBAC cannot narrow a write to one field: this also allows changing the pod template, i.e. a pod "
    "that mounts any Secret of the namespace or runs as any of its ServiceAccounts. So it is granted "
    "only with --user-secret (the switch needs it; a generated password never does), and on Kubernetes "
    "1.30+ deployments/validating-admission-policy.yaml limits this identity's writes to "
    "spec.authSecret and the secretKeyRef names."
)


def _switch_rules(g: Grant) -> list[Rule]:
    """The main-resource writes of a switch to a user's secret (commit-secret, update-petsets)."""
    return [
        Rule(
            c.DB_GROUP,
            (c.DB_PLURAL,),
            ("patch",),
            (g.database,),
            "Only with --user-secret: commit-secret and update-petsets merge-patch spec.authSecret "
            "(name and activeFrom) to switch the database to the user's secret; nothing else is "
            f"patched. {ESCALATION}",
        ),
        Rule(
            c.PETSET_GROUP,
            (c.PETSET_PLURAL,),
            ("update",),
            (g.database,),
            "Only with --user-secret: update-petsets replaces the PetSet so that its secretKeyRefs name "
            f"the user's secret. {ESCALATION}",
        ),
    ]


def _ops_request_rules() -> list[Rule]:
    return [
        Rule(
            c.OPS_GROUP,
            (c.OPS_PLURAL,),
            ("get",),
            (),
            "Only with --ops-requests (runs that carry out an MSSQLServerOpsRequest, started by the "
            "bridge): read the request the run carries out (its generation). Not by name: requests are "
            "named by whoever applies them.",
        ),
        Rule(
            c.OPS_GROUP,
            (f"{c.OPS_PLURAL}/status",),
            ("patch",),
            (),
            "Only with --ops-requests: write the run's progress into that request's status (phase, "
            "KubeDB's RotateAuth conditions), as KubeDB's ops-manager does. Not by name, as above. It "
            "also lets the identity mark another request of the namespace ended, which makes KubeDB "
            "resume that request's database: grant it only where the bridge runs rotations.",
        ),
    ]


# -- manifests ---------------------------------------------------------------------------------------
def _metadata(g: Grant) -> dict[str, Any]:
    return {
        "name": g.role_name,
        "namespace": g.namespace,
        "labels": dict(LABELS),
        "annotations": {ANNOTATION_DATABASE: g.database, ANNOTATION_REPLICAS: str(g.replicas)},
    }


def role(g: Grant) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(g),
        "rules": [rule.manifest() for rule in g.rules],
    }


def role_binding(g: Grant) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _metadata(g),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": g.role_name},
        "subjects": [
            {"kind": "ServiceAccount", "name": name, "namespace": namespace} for namespace, name in g.subjects
        ],
    }


def lease(g: Grant) -> dict[str, Any]:
    """The rotation lock, created with the grant so that the identity needs no ``create`` on Leases.
    No spec: nobody holds it, and ``kubectl apply`` of this again never clears a running rotation's
    holder (apply only changes the fields a manifest names)."""
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {
            "name": lock_name(g.database),
            "namespace": g.namespace,
            "labels": dict(LABELS),
            "annotations": {ANNOTATION_DATABASE: g.database},
        },
    }


def documents(g: Grant) -> list[dict[str, Any]]:
    """The Role, its RoleBinding and the Lease, as plain dicts (what ``render`` writes as YAML)."""
    return [role(g), role_binding(g), lease(g)]


# -- YAML --------------------------------------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9.\-/]*")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _scalar(value: str | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def _block(value: dict[str, Any], indent: int) -> list[str]:
    pad, lines = " " * indent, []
    for key, item in value.items():
        if isinstance(item, dict):
            lines += [f"{pad}{key}:", *_block(item, indent + 2)]
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            lines.append(f"{pad}{key}:")
            for element in item:
                nested = _block(element, indent + 4)
                lines += [f"{pad}  - {nested[0].lstrip()}", *nested[1:]]
        elif isinstance(item, list):
            lines.append(f"{pad}{key}: [{', '.join(json.dumps(e) for e in item)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(item)}")
    return lines


def _comment(text: str, indent: int = 0) -> list[str]:
    prefix = " " * indent + "# "
    return textwrap.wrap(text, WIDTH, initial_indent=prefix, subsequent_indent=prefix, break_on_hyphens=False)


def _header(g: Grant) -> list[str]:
    ref = f"{g.namespace}/{g.database}"
    account = f"ServiceAccount {g.service_account_namespace}/{g.service_account} (deployments/rbac.yaml)"
    if len(g.subjects) > 1:
        account = (
            f"ServiceAccounts {g.service_account_namespace}/{g.service_account} (deployments/rbac.yaml) and "
            f"{g.service_account_namespace}/{FLEET_IDENTITY}, the in-cluster fleet's (--fleet; "
            "deployments/rbac-fleet.yaml),"
        )
    lines = [
        f"# The rotation's RBAC for MSSQLServer {ref} ({g.replicas} replicas), generated by:",
        f"#   {g.command}",
        "# Do not edit: change the arguments and generate it again. Apply it with kubectl apply -f.",
        "#",
    ]
    text = [
        f"It grants {account} what a rotation of this one database "
        f"calls (rotation/kube.py), in namespace {g.namespace} only, with a Role and a RoleBinding, and "
        "creates the database's rotation lock (a Lease). Every "
        "rule that can name its objects does (resourceNames); the comment on each rule names the steps "
        '(tasks) that need it. A call it does not allow fails the run with 403 and "needs the '
        'permissions in deployments/rbac.yaml".',
        f"The pods are named from the replica count ({', '.join(pod_names(g.database, g.replicas))}). "
        "Scaling the database (spec.replicas) means generating and applying this again before the next "
        "rotation: otherwise that rotation is refused (403) when it restarts the first pod not named "
        "here, after the new password is committed (apply the new grant and run it again to finish).",
        "A user secret a rotation is given must be listed (--user-secret): an unlisted one is refused "
        "(403) in inspect-database before anything changes. After such a rotation the database uses it "
        "as its auth secret, so keep it listed.",
        "Without --user-secret (generated passwords only) the MSSQLServer and its PetSet are only read: "
        "this identity cannot change the database's pod template. With it, it may patch the MSSQLServer "
        "and update the PetSet, which RBAC cannot narrow to the secret references: on Kubernetes 1.30+ "
        "also apply deployments/validating-admission-policy.yaml.",
        _workloads_paragraph(g),
    ]
    for i, paragraph in enumerate(text):
        lines += (["#"] if i else []) + _comment(paragraph)
    return lines


def _workloads_paragraph(g: Grant) -> str:
    named = ", ".join(str(w) for w in g.restart_workloads)
    return (
        "After a successful rotation, the namespace's Deployments, StatefulSets and DaemonSets annotated "
        f"{RELOAD_ANNOTATION}: <auth secret>, and those the run lists (restart_workloads), are restarted "
        "(kubectl rollout restart), but only those named here with --restart-workload KIND/NAME"
        + (f" ({named}; it may change their pod templates)" if named else " (none is)")
        + ". The grant lets the rotation list the three kinds, read only, so that the annotation is always "
        "honoured; an annotated or listed workload it may not restart is reported (run log, report, "
        "Event) with the command that grants it, and the rotation still succeeds."
    )


def render(g: Grant) -> str:
    """The grant as a multi-document YAML stream, with a comment on every rule."""
    bound = role(g)
    lines = _header(g)
    lines += _block({k: v for k, v in bound.items() if k != "rules"}, 0)
    lines.append("rules:")
    for rule in g.rules:
        lines += _comment(rule.why, 2)
        nested = _block(rule.manifest(), 4)
        lines += [f"  - {nested[0].lstrip()}", *nested[1:]]
    lines.append("---")
    whom = "the flow runs' ServiceAccount" + (" and the fleet's" if len(g.subjects) > 1 else "")
    lines += _comment(
        f"Binds the Role to {whom}, in namespace {g.namespace} only (a RoleBinding, never a "
        "ClusterRoleBinding)."
    )
    lines += _block(role_binding(g), 0)
    lines.append("---")
    lines += _comment(
        f"The rotation lock of {g.database} (acquire-lock, release-lock), with no holder. Created here, "
        "not by the rotation: a create cannot be limited by name, so the Role does not grant it (and "
        "nobody holding this identity can create a Lease in the namespace). Applying this file again "
        "leaves a running rotation's holder alone."
    )
    lines += _block(lease(g), 0)
    return "\n".join(lines) + "\n"


# -- the fleet's identity --------------------------------------------------------------------------
FLEET_ROLE: Final = "mssql-auth-rotation-fleet-discovery"
FLEET_COMMAND: Final = "python -m rotation rbac-fleet"
DISCOVERY_WHY: Final = (
    "discover-databases: list MSSQLServers (names, specs and status; they hold no credentials), to "
    "plan each one. Only list: no get, no watch, no write, and nothing else of the database; reading its "
    "secret and Lease, and rotating it, need its own grant (python -m rotation rbac ... --fleet). Not by "
    "name: a list names no object."
)


@dataclass(frozen=True)
class FleetGrant:
    """The in-cluster fleet's identity and what lets it discover. Build it with :func:`fleet_grant`."""

    namespaces: tuple[str, ...]  # empty: every namespace (a ClusterRole)
    service_account: str = FLEET_IDENTITY
    service_account_namespace: str = IDENTITY

    @property
    def command(self) -> str:
        parts = [FLEET_COMMAND]
        for namespace in self.namespaces:
            parts += ["--namespace", namespace]
        if not self.namespaces:
            parts.append("--all-namespaces")
        if self.service_account != FLEET_IDENTITY:
            parts += ["--service-account", self.service_account]
        if self.service_account_namespace != IDENTITY:
            parts += ["--service-account-namespace", self.service_account_namespace]
        return " ".join(parts)


def fleet_grant(
    namespaces: Sequence[str] = (),
    *,
    all_namespaces: bool = False,
    service_account: str = FLEET_IDENTITY,
    service_account_namespace: str = IDENTITY,
) -> FleetGrant:
    """Validate; :class:`InvalidName` names the bad argument. Cluster-wide discovery only when asked
    (``all_namespaces``), never together with ``namespaces``."""
    if all_namespaces == bool(namespaces):
        raise InvalidName(
            "give either --all-namespaces (the fleet may list MSSQLServers in every namespace: what "
            "the scheduled-in-cluster and recover-in-cluster deployments need, which name no namespaces) "
            "or --namespace NS for each namespace it may list in (then give the fleet runs the same "
            "namespaces)"
        )
    chosen = _unique(_label(ns, "--namespace") for ns in namespaces)
    _subdomain(service_account, "--service-account")
    _label(service_account_namespace, "--service-account-namespace")
    return FleetGrant(chosen, service_account, service_account_namespace)


def _fleet_meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(LABELS) | {"app.kubernetes.io/component": "fleet"}
    return meta


def _discovery_rule() -> dict[str, Any]:
    return {"apiGroups": [c.DB_GROUP], "resources": [c.DB_PLURAL], "verbs": ["list"]}


def _subject(g: FleetGrant) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": g.service_account, "namespace": g.service_account_namespace}


def fleet_documents(g: FleetGrant) -> list[dict[str, Any]]:
    """The fleet's ServiceAccount, and a role that may list (and only list) MSSQLServers with its
    binding: a ClusterRole for every namespace, or a Role per named namespace. Rotating a database
    still needs that database's own Role bound to this ServiceAccount (``grant(..., fleet=True)``)."""
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _fleet_meta(g.service_account, g.service_account_namespace),
        "automountServiceAccountToken": True,
    }
    if not g.namespaces:
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FLEET_ROLE}
        return [
            account,
            {
                "apiVersion": RBAC_API_VERSION,
                "kind": "ClusterRole",
                "metadata": _fleet_meta(FLEET_ROLE),
                "rules": [_discovery_rule()],
            },
            {
                "apiVersion": RBAC_API_VERSION,
                "kind": "ClusterRoleBinding",
                "metadata": _fleet_meta(FLEET_ROLE),
                "roleRef": ref,
                "subjects": [_subject(g)],
            },
        ]
    docs = [account]
    for namespace in g.namespaces:
        docs += [
            {
                "apiVersion": RBAC_API_VERSION,
                "kind": "Role",
                "metadata": _fleet_meta(FLEET_ROLE, namespace),
                "rules": [_discovery_rule()],
            },
            {
                "apiVersion": RBAC_API_VERSION,
                "kind": "RoleBinding",
                "metadata": _fleet_meta(FLEET_ROLE, namespace),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FLEET_ROLE},
                "subjects": [_subject(g)],
            },
        ]
    return docs


def _fleet_document(doc: dict[str, Any]) -> list[str]:
    """One document of the fleet's grant as YAML, its rule (if any) commented."""
    lines = _block({k: v for k, v in doc.items() if k != "rules"}, 0)
    if "rules" in doc:
        lines.append("rules:")
        for rule in doc["rules"]:
            nested = _block(rule, 4)
            lines += [*_comment(DISCOVERY_WHY, 2), f"  - {nested[0].lstrip()}", *nested[1:]]
    return lines


def render_fleet(g: FleetGrant) -> str:
    account = f"{g.service_account_namespace}/{g.service_account}"
    where = "in every namespace (a ClusterRole)"
    if g.namespaces:
        plural = "s" if len(g.namespaces) > 1 else ""
        where = f"in namespace{plural} {', '.join(g.namespaces)} only (a Role in each)"
    lines = [
        "# The in-cluster fleet's identity (rotate-mssql-fleet, deployments scheduled-in-cluster and",
        "# recover-in-cluster), generated by:",
        f"#   {g.command}",
        "# Do not edit: change the arguments and generate it again. Apply it with kubectl apply -f.",
        "#",
    ]
    text = [
        f"ServiceAccount {account}: the fleet runs' own identity, fixed by the fleet pool's base job "
        "template (deployments/k8s-fleet-job-template.json), apart from the one that on-demand "
        "in-cluster runs use (deployments/rbac.yaml), so neither gets the other's rights.",
        f"It may list MSSQLServers {where}, nothing else: no get, no watch, no secrets, no writes. The "
        "fleet rotates a database only where that database's own Role is bound to it too: python -m "
        "rotation rbac --namespace NS --database DB --replicas N --fleet. A listed database without "
        "one is reported as skipped (cannot be read, 403), with that command; nothing of it is changed.",
    ]
    for i, paragraph in enumerate(text):
        lines += (["#"] if i else []) + _comment(paragraph)
    for i, doc in enumerate(fleet_documents(g)):
        lines += ["---"] if i else []
        lines += _fleet_document(doc)
    return "\n".join(lines) + "\n"
