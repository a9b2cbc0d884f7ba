"""What the rotation works on and where it stands: pure models and decisions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from rotation import constants as c


class Stage(StrEnum):
    """Where a database's rotation stands, read from its auth secret (the durable record)."""

    IDLE = "idle"  # no rotation under way
    STAGED = "staged"  # a new password is in username.next/password.next; replicas may have it
    COMMITTED = "committed"  # the secret holds the new password; pods still need their restart


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


def stage_of(keys: set[str], annotations: dict[str, str]) -> Stage:
    if c.ANNOTATION_RESTART_PENDING in annotations:
        return Stage.COMMITTED
    if c.KEY_PASSWORD_NEXT in keys:
        return Stage.STAGED
    return Stage.IDLE


def role_of(labels: dict[str, str], replicas: int) -> str:
    """KubeDB labels AG replicas; a standalone server is its own primary."""
    if replicas == 1:
        return labels.get(c.LABEL_ROLE, c.ROLE_PRIMARY)
    return labels.get(c.LABEL_ROLE, "")


def restart_order(replicas: tuple[Replica, ...]) -> list[Replica]:
    """Secondaries first (by name), the primary last, so the primary fails over at most once."""
    return sorted(replicas, key=lambda r: (r.role == c.ROLE_PRIMARY, r.pod))
