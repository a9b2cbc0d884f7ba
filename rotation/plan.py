"""What the rotation works on and where it stands: pure models and decisions, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from rotation import constants as c


class Stage(StrEnum):
    """Where a database's rotation stands, read from its auth secret (the durable record)."""

    IDLE = "idle"  # no rotation under way
    STAGED = "staged"  # a new password is in username.next/password.next; replicas may have it
    COMMITTED = "committed"  # the secret holds the new password; pods still need their restart
    RESUME_ONLY = "resume-only"  # an interrupted run had finished everything but resuming


@dataclass(frozen=True)
class Endpoint:
    """Where one replica's SQL Server listens: its pod's IP and the SQL port."""

    pod: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.pod} ({self.host}:{self.port})"


class Replica(BaseModel):
    model_config = ConfigDict(frozen=True)

    pod: str
    host: str  # the pod's status.podIP
    uid: str
    role: str  # primary or secondary


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
    sql_port: int
    timeout_seconds: float
    interrupted_run: str | None = None  # a run of ours that died and left the database paused

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.database}"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(r.pod, r.host, self.sql_port) for r in self.replicas]

    @property
    def lock_name(self) -> str:
        return lock_name(self.database)


def lock_name(database: str) -> str:
    """The Lease that serialises rotations of one database."""
    return f"{database}-rotate-auth"


def stage_of(keys: set[str], annotations: dict[str, str], interrupted_run: str | None = None) -> Stage:
    """Where the rotation stands; ``interrupted_run`` is a run of ours that died mid-rotation, if any."""
    if c.ANNOTATION_RESTART_PENDING in annotations:
        return Stage.COMMITTED
    if c.KEY_PASSWORD_NEXT in keys:
        return Stage.STAGED
    if interrupted_run is not None and annotations.get(c.ANNOTATION_ROTATED_BY) == interrupted_run:
        return Stage.RESUME_ONLY
    return Stage.IDLE


def pause_message(holder: str) -> str:
    return f"{c.PAUSE_MESSAGE_PREFIX} (run {holder})"


def is_our_pause(condition: dict[str, Any]) -> bool:
    return condition.get("type") == c.CONDITION_PAUSED and str(condition.get("message", "")).startswith(
        c.PAUSE_MESSAGE_PREFIX
    )


def active_pause(database: dict[str, Any]) -> dict[str, Any] | None:
    """The MSSQLServer's Paused condition if it is True (whoever set it)."""
    for condition in (database.get("status") or {}).get("conditions") or []:
        if condition.get("type") == c.CONDITION_PAUSED and condition.get("status") == "True":
            return dict(condition)
    return None


def pause_holder(condition: dict[str, Any]) -> str | None:
    """The run named in one of our Paused conditions."""
    match = re.search(r"\(run ([^)]+)\)$", str(condition.get("message", "")))
    return match.group(1) if is_our_pause(condition) and match else None


def role_of(labels: dict[str, str], replicas: int) -> str:
    """KubeDB labels AG replicas; a standalone server is its own primary."""
    if replicas == 1:
        return labels.get(c.LABEL_ROLE, c.ROLE_PRIMARY)
    return labels.get(c.LABEL_ROLE, "")


def restart_order(replicas: tuple[Replica, ...]) -> list[Replica]:
    """Secondaries first (by name), the primary last, so the primary fails over at most once."""
    return sorted(replicas, key=lambda r: (r.role == c.ROLE_PRIMARY, r.pod))
