"""What the rotation works on and where it stands: pure models and decisions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from rotation import constants as c
from rotation.ops_request import queued_by_bridge
from rotation.tls import TlsProfile, pod_dns_name


class Stage(StrEnum):
    """Where a database's rotation stands, read from its auth secret (the durable record)."""

    IDLE = "idle"  # no rotation under way
    STAGED = "staged"  # a new password is in username.next/password.next; replicas may have it
    COMMITTED = "committed"  # the secret holds the new password; pods still need their restart
    RESUME_ONLY = "resume-only"  # an interrupted run had finished everything but resuming


@dataclass(frozen=True)
class Endpoint:
    """Where one replica's SQL Server listens (its pod's IP and the SQL port it declares), the name
    its certificate must carry, and what the rotation trusts there."""

    pod: str
    host: str
    port: int
    server_name: str  # <pod>.<db>-pods.<ns>.svc
    tls: TlsProfile

    @property
    def address(self) -> str:
        """``host:port``; an IPv6 host in brackets (FreeTDS reads ``[ip]:port``, not ``ip`` + port)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.pod} ({self.address})"


@dataclass(frozen=True)
class PodView:
    """What the rotation needs of a pod, read by the Kubernetes adapter (no client types here)."""

    name: str
    uid: str
    ip: str | None
    port: int  # the mssql container's port named "db"
    role_label: str  # kubedb.com/role, "" when the coordinator has not set one
    ready: bool
    terminating: bool
    owner: str | None  # name of the PetSet that controls it


class Replica(BaseModel):
    model_config = ConfigDict(frozen=True)

    pod: str
    host: str  # the pod's status.podIP
    port: int
    uid: str
    role: str  # primary, secondary, or "" while the coordinator elects a primary


class Target(BaseModel):
    """One database as the rotation found it. Holds names and addresses, never a secret value."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    database: str
    uid: str
    auth_secret: str  # the secret spec.authSecret.name points at now
    username: str
    topology: str  # Standalone or AvailabilityGroup
    replicas: tuple[Replica, ...]
    stage: Stage
    timeout_seconds: float
    tls: TlsProfile
    restart: tuple[str, ...]  # the pods still to restart: all, or those an interrupted run left
    holder: str  # this run, as it names itself in the Lease, the pause and the secret
    interrupted_run: str | None = None  # a run of ours that died and left the database paused
    lapsed_lock_version: str | None = None  # resourceVersion of a dead run's Lease, judged lapsed
    skip: str | None = None  # why there is nothing to do (not due; nothing to finish)
    ops_request: str | None = None  # the MSSQLServerOpsRequest this run carries out, if any

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.database}"

    def endpoints(self) -> list[Endpoint]:
        return [self.endpoint_of(r) for r in self.replicas]

    def endpoint_of(self, replica: Replica) -> Endpoint:
        name = pod_dns_name(replica.pod, self.database, self.namespace)
        return Endpoint(replica.pod, replica.host, replica.port, name, self.tls)

    @property
    def lock_name(self) -> str:
        return lock_name(self.database)


def lock_name(database: str) -> str:
    """The Lease that serialises rotations of one database."""
    return f"{database}-rotate-auth"


def stage_of(keys: set[str], annotations: dict[str, str], paused_by: str | None = None) -> Stage:
    """Where the rotation stands. ``paused_by`` is the run of ours whose pause is still on the
    database (it died before resuming), if any.

    RESUME_ONLY needs that pause: a run that finished and resumed but could not release its Lease
    also left its name on the secret, and the next run must then rotate, not do nothing.
    """
    if c.ANNOTATION_RESTART_PENDING in annotations:
        return Stage.COMMITTED
    if c.KEY_PASSWORD_NEXT in keys:
        return Stage.STAGED
    if paused_by is not None and annotations.get(c.ANNOTATION_ROTATED_BY) == paused_by:
        return Stage.RESUME_ONLY
    return Stage.IDLE


def pause_message(holder: str) -> str:
    return f"{c.PAUSE_MESSAGE_PREFIX} (run {holder})"


def is_our_pause(condition: dict[str, Any]) -> bool:
    return condition.get("type") == c.CONDITION_PAUSED and str(condition.get("message", "")).startswith(
        c.PAUSE_MESSAGE_PREFIX
    )


def pauses(database: dict[str, Any]) -> list[dict[str, Any]]:
    """The MSSQLServer's Paused conditions that pause it: requested (Unknown) or acknowledged (True)."""
    return [
        dict(condition)
        for condition in (database.get("status") or {}).get("conditions") or []
        if condition.get("type") == c.CONDITION_PAUSED
        and condition.get("status") in (c.PAUSE_REQUESTED, c.PAUSE_ACKNOWLEDGED)
    ]


def foreign_pause(database: dict[str, Any]) -> dict[str, Any] | None:
    """A pause set by anyone but this project (KubeDB's ops-manager, a person): the database is busy."""
    return next((p for p in pauses(database) if not is_our_pause(p)), None)


def our_pause(database: dict[str, Any], holder: str) -> dict[str, Any] | None:
    return next((p for p in pauses(database) if pause_holder(p) == holder), None)


def pause_of_another(database: dict[str, Any], holder: str) -> dict[str, Any] | None:
    """A pause that is not this run's, standing next to it: the database is held by someone else too.

    Stricter than :func:`foreign_pause`: under the lock no other run of ours should pause it either.
    """
    return next((p for p in pauses(database) if pause_holder(p) != holder), None)


def describe_pause(condition: dict[str, Any]) -> str:
    state = "requested" if condition.get("status") == c.PAUSE_REQUESTED else "in effect"
    return f"{condition.get('message') or condition.get('reason') or 'no reason given'} ({state})"


def pause_holder(condition: dict[str, Any]) -> str | None:
    """The run named in one of our Paused conditions."""
    match = re.search(r"\(run ([^)]+)\)$", str(condition.get("message", "")))
    return match.group(1) if is_our_pause(condition) and match else None


def role_of(labels: dict[str, str], replicas: int) -> str:
    """KubeDB labels AG replicas; a standalone server is its own primary."""
    if replicas == 1:
        return labels.get(c.LABEL_ROLE, c.ROLE_PRIMARY)
    return labels.get(c.LABEL_ROLE, "")


def replica_of(pod: PodView, replicas: int) -> Replica:
    if pod.ip is None:
        raise ValueError(f"pod {pod.name} has no IP yet")
    role = pod.role_label or (c.ROLE_PRIMARY if replicas == 1 else "")
    return Replica(pod=pod.name, host=pod.ip, port=pod.port, uid=pod.uid, role=role)


def is_database_pod(pod: PodView, database: str) -> bool:
    """A replica of the database: controlled by its PetSet ``<db>`` (an arbiter's PetSet is another)."""
    return pod.owner == database


def usable_replicas(
    pods: Sequence[PodView], database: str, names: Sequence[str]
) -> tuple[Replica, ...] | None:
    """The replicas ``names`` as they are now, once every one runs; None while one is away."""
    running = {p.name: p for p in pods if is_database_pod(p, database) and p.ip and not p.terminating}
    if any(name not in running for name in names):
        return None
    return tuple(replica_of(running[name], len(names)) for name in names)


def primaries(replicas: Sequence[Replica]) -> list[str]:
    return [r.pod for r in replicas if r.role == c.ROLE_PRIMARY]


def roles_settled(replicas: Sequence[Replica]) -> bool:
    """Exactly one primary and every other replica a secondary: no election under way."""
    return len(primaries(replicas)) == 1 and all(
        r.role in (c.ROLE_PRIMARY, c.ROLE_SECONDARY) for r in replicas
    )


def next_to_restart(replicas: Sequence[Replica], pending: Collection[str]) -> Replica | None:
    """Among the pods still to restart, as the roles are now: secondaries first (by name), the
    primary last, so the primary fails over at most once. None when nothing is left."""
    candidates = [r for r in replicas if r.pod in pending]
    return min(candidates, key=lambda r: (r.role == c.ROLE_PRIMARY, r.pod), default=None)


def active_ops_requests(
    requests: Sequence[dict[str, Any]], database: str, own: str | None = None
) -> list[str]:
    """KubeDB ops requests of the database that run now or are about to, as ``name (Type, Phase)``.

    ``own`` is the request this run carries out, if any (it is Progressing because of us). Requests
    the bridge holds back behind a running one are not about to run (rotation/ops_request.py).
    """
    active = []
    for request in requests:
        name = request.get("metadata", {}).get("name", "")
        spec, status = request.get("spec") or {}, request.get("status") or {}
        if (spec.get("databaseRef") or {}).get("name") != database or name == own:
            continue
        if queued_by_bridge(request):
            continue
        phase = status.get("phase") or ""
        if phase in c.OPS_ACTIVE_PHASES:
            active.append(f"{name} ({spec.get('type', '?')}, {phase or 'Pending'})")
    return sorted(active)


def unsupported_auth_secret(auth_secret: dict[str, Any]) -> str | None:
    """Why a database's ``spec.authSecret`` is not this tool's to rotate, or None."""
    if auth_secret.get("externallyManaged"):
        return (
            "its spec.authSecret is externallyManaged: the secret's owner (an external secret manager) "
            "would put the old password back; rotate it there"
        )
    if (auth_secret.get("apiGroup") or "") == c.VIRTUAL_SECRETS_GROUP:
        return (
            f"its credentials are a {c.VIRTUAL_SECRETS_GROUP} virtual secret, kept in the external "
            f"secret store {auth_secret.get('secretStoreName') or '(unnamed)'} that this tool cannot "
            "write; rotate it in that store"
        )
    return None


def secret_users(databases: Sequence[dict[str, Any]], secret: str) -> list[str]:
    """The MSSQLServers (of one namespace) whose auth secret is ``secret``."""
    users = []
    for db in databases:
        auth = (db.get("spec") or {}).get("authSecret") or {}
        name = db.get("metadata", {}).get("name", "")
        if (auth.get("name") or f"{name}-auth") == secret:
            users.append(name)
    return sorted(users)
